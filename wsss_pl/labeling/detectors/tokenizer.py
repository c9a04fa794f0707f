"""The bert-base-uncased WordPiece tokenizer Grounding DINO was trained with, available offline.

Grounding DINO's text branch is BERT and its phrase masks hard-code the bert-base-uncased ids of
``[CLS]``, ``[SEP]``, ``.`` and ``?`` (101, 102, 1012, 1029), so any other vocabulary silently
breaks phrase grounding. The tokenizer comes from the detector's own directory when it ships one,
otherwise from the bert-base-uncased vocabulary shipped inside wsss_pl
(``wsss_pl/labeling/detectors/vocab/bert-base-uncased/vocab.txt``, 232 kB, Apache-2.0, see its NOTICE), so
nothing is downloaded at run time and no model package is installed for a word list.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from transformers import BertTokenizerFast, PreTrainedTokenizerFast

from wsss_pl.errors import WeightsError

BERT_VOCAB_SIZE = 30522
BERT_VOCAB_MD5 = "64800d5d8528ce344256daf115d4965e"
# Delimiters Grounding DINO's text masks are built from (GroundingDinoModel.special_tokens).
GROUNDING_SPECIAL_IDS = {"[CLS]": 101, "[SEP]": 102, ".": 1012, "?": 1029}
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


def packaged_vocab_dir() -> Path:
    """Directory of the bert-base-uncased vocabulary shipped with wsss_pl."""
    return Path(__file__).resolve().parent / "vocab" / "bert-base-uncased"


def _check_vocab_file(vocab: Path) -> None:
    if not vocab.is_file():
        raise WeightsError(f"BERT vocabulary not found: {vocab}; reinstall wsss_pl")
    data = vocab.read_bytes()
    lines = data.decode("utf-8").splitlines()
    digest = hashlib.md5(data).hexdigest()
    if len(lines) != BERT_VOCAB_SIZE or digest != BERT_VOCAB_MD5:
        raise WeightsError(
            f"{vocab} is not the bert-base-uncased vocabulary ({len(lines)} entries, md5 {digest}; "
            f"expected {BERT_VOCAB_SIZE} entries, md5 {BERT_VOCAB_MD5}); reinstall wsss_pl"
        )


def _check_tokenizer(tokenizer: PreTrainedTokenizerFast, source: Path) -> None:
    ids = tokenizer.convert_tokens_to_ids(list(GROUNDING_SPECIAL_IDS))
    if len(tokenizer) != BERT_VOCAB_SIZE or ids != list(GROUNDING_SPECIAL_IDS.values()):
        raise WeightsError(
            f"tokenizer from {source} is not bert-base-uncased ({len(tokenizer)} tokens, ids of "
            f"{list(GROUNDING_SPECIAL_IDS)} = {ids}); Grounding DINO needs exactly that vocabulary"
        )
    # A tokenizer.json may pin truncation/padding (e.g. at 128); captions are chunked by
    # wsss_pl.labeling.detectors.prompt instead, and padding is asked for per call.
    tokenizer.backend_tokenizer.no_truncation()
    tokenizer.backend_tokenizer.no_padding()


def bert_tokenizer(model_dir: str | Path | None = None) -> PreTrainedTokenizerFast:
    """The fast bert-base-uncased tokenizer for Grounding DINO captions, loaded offline.

    Args:
        model_dir: a local Grounding DINO directory; its tokenizer is used when it has
            ``tokenizer.json`` or ``vocab.txt``, otherwise the packaged vocabulary.

    Raises:
        WeightsError: the vocabulary is missing or is not bert-base-uncased (size, md5, ids).
    """
    if model_dir is not None and any((Path(model_dir) / f).is_file() for f in _TOKENIZER_FILES):
        source = Path(model_dir)
    else:
        source = packaged_vocab_dir()
        _check_vocab_file(source / "vocab.txt")
    # from_pretrained(dir), not BertTokenizerFast(vocab_file=...): in transformers 5 the latter
    # builds a 5-token tokenizer without a word.
    tokenizer = BertTokenizerFast.from_pretrained(str(source))
    _check_tokenizer(tokenizer, source)
    return tokenizer
