"""Human corrections of pseudo-labels: export for review (Label Studio, COCO for CVAT), import the
reviewed labels into a corrections layer that training reads before the pseudo-label cache."""
