#!/usr/bin/env python3
"""Regenerates Tests/Fixtures/tokenizers/: a seeded corpus and the ids HF `tokenizers` gives it.

Needs `pip install tokenizers transformers gguf` (transformers' GGUF path also imports torch)
and the files scripts/fetch-models.sh puts in $LOUPE_MODELS (default ~/.cache/loupe/models).
Gemma's vocabulary is not committed (its terms of use): only the ids it gives the corpus.

Writes
  corpus.json       {"seed", "strings": [...]}: >2,000 strings, the same on every run.
  <name>.json       for each reference tokenizer: "ids" (one list per corpus string),
                    "decode" (random id sequences and HF's decoded text, invalid UTF-8
                    included) and "tokenizer_json": the tokenizer.json HF writes for it with
                    the vocab and merges left empty, for the Swift tests to fill from the
                    model files (the full vocabularies are too big to commit twice), and
                    "pieces": where HF's pre-tokenizer ends each piece of each string (code-point
                    offsets, in the normalized text; null for strings holding an added token,
                    which the pre-tokenizer alone does not know), and "decoded": HF's decoding of
                    each string's ids (less a leading BOS) where it is not the string itself.
  <name>/tokenizer.json  the small tokenizers trained here, whole.

The corpus is checked to tell apart each reference pre-tokenizer from near-miss variants (case
folding, lookahead, which whitespace, marks as letters ...): every variant must split at least
one string differently, so the golden pieces pin each rule down.

The references:
  gpt2          OpenAI's encoder.json + vocab.bpe as HF builds them (ByteLevel pre-tokenizer,
                <|endoftext|> special). Cross-checked against transformers' GPT2TokenizerFast.
  smollm2       SmolLM2's GGUF vocabulary and merges with the pre-tokenizer of SmolLM2's own
                tokenizer.json, Sequence[Digits(individual_digits), ByteLevel], which is also
                what llama.cpp runs for `tokenizer.ggml.pre = smollm` ("\\p{N}" then the GPT-2
                regex). transformers' GGUF conversion leaves the Digits step out; the script
                checks it agrees on every string with no numeric character and records the
                ones where it differs.
  gpt2-llama3   GPT-2's vocabulary behind Llama-3's Split pre-tokenizer, with ignore_merges,
                to pin the Split path and the Llama-3 pattern.
  gemma3        Gemma 3's tokenizer as transformers builds it from the GGUF file
                (AutoTokenizer.from_pretrained(gguf_file=...)); ids with BOS, as HF encodes.
  llama2-style  A SentencePiece-style BPE trained here on the corpus: byte fallback, "▁" for
                spaces from the normalizer (Prepend + Replace, as Llama-2's tokenizer.json),
                <s> put first by the post-processor. llama2-metaspace: the same vocabulary
                with the Metaspace pre-tokenizer (prepend_scheme "first") instead, as
                transformers' LlamaTokenizer builds it now.
  llama-gguf    The llama2-style vocabulary written as a GGUF file (tokenizer.ggml.model =
                llama, scores and no merges), as transformers' GGUF loader builds it: merges
                derived from the scores, Metaspace, <s> first.
  gpt-neox-style  A stand-in for Pythia's (GPT-NeoX-20B's) tokenizer, trained here: byte-level
                BPE, NFC, <|endoftext|> and <|padding|>, and runs of spaces as normalized added
                tokens.
  qwen2-style   A stand-in for Qwen2's tokenizer, trained here: NFC, Qwen2's Split regex then
                ByteLevel, <|endoftext|>, <|im_start|>, <|im_end|>.
"""
import itertools
import json
import os
import random
import sys
import unicodedata

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

SEED = 20240601
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests", "Fixtures", "tokenizers")
MODELS = os.environ.get("LOUPE_MODELS", os.path.expanduser("~/.cache/loupe/models"))
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA_GGUF = "gemma-3-270m-q4_k_m.gguf"

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")

# ---------------------------------------------------------------------------------------------
# The corpus

NAMES = ["John", "Mary", "Alice", "Bob", "Zoë", "José", "Ольга", "李雷", "محمد", "Søren"]
WORDS = ("the of and to in is was he for it with as his on be at by I this had not are but from "
         "or have an they which one you were her all she there would their we him been has when "
         "who will more no if out so said what up its about into than them can only other new "
         "some could time these two may then do first any my now such like our over man me even "
         "most made after also did many before must through back years where much your way well "
         "down should because each just those people Mr how too little state good very make world "
         "still own see men work long get here between both life being under never day same "
         "another know while last might us great old year off come since against go came right "
         "used take three tokenizer byte-level pre-tokenization Ġ merges vocabulary").split()
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'VE", "'M",
                "'LL", "'D", "’s", "’t", "’re", "’ll", "'ſ", "'x", "''", "'"]
SENTENCES = [
    "After John and Mary went to the store, Mary gave a bottle of milk to",
    "After John and Mary went to the store, John gave a bottle of milk to",
    "When Mary and John went to the park, John gave a ball to",
    "I'm sure you're right, but it's not what we'd planned; they've said they'll go.",
    "I'M SURE YOU'RE RIGHT, BUT IT'S NOT WHAT WE'D PLANNED; THEY'VE SAID THEY'LL GO.",
    "It’s a ‘quoted’ “phrase” — isn’t it? Don’t you think we’d’ve known?",
    "rock'n'roll, o'clock, y'all'd've, 'tis, ma'am, Hawai'i",
    "The quick brown fox jumps over the lazy dog.",
    "Sphinx of black quartz, judge my vow!",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.",
]
SCRIPTS = [
    "中文分词测试：我们今天去商店买了一瓶牛奶。",
    "日本語のテキストです。カタカナとひらがなと漢字。",
    "한국어 문장입니다. 토크나이저를 시험합니다.",
    "العربية: ذهب محمد إلى السوق واشترى الحليب.",
    "עברית: שלום עולם, מה שלומך?",
    "Русский текст: съешь же ещё этих мягких французских булок.",
    "Ελληνικά: Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.",
    "हिन्दी: यह एक परीक्षण वाक्य है।",
    "ภาษาไทย: นี่คือประโยคทดสอบ",
    "தமிழ்: இது ஒரு சோதனை வாக்கியம்.",
    "ქართული ენა", "Հայերեն լեզու", "አማርኛ ቋንቋ", "ᚠᛇᚻ᛫ᛒᛦᚦ", "Tiếng Việt có dấu: Đường phố",
    "Ñandú, façade, naïve, coöperate, Æsir, Œuvre, straße, ĳssel, ǅemal",
    "e\u0301 vs é, a\u0308 vs ä, Zalgo: Z\u0351\u036b\u0343a\u0352\u036al\u0360g\u0335o\u0334",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝕸𝖆𝖙𝖍: ∀x∈ℝ, x²≥0; ∑ᵢ aᵢ = ∞ ≠ ∅",
    "Ａｂｃ　ｆｕｌｌｗｉｄｔｈ　１２３",
]
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇯🇵", "🇺🇸🇬🇧", "1️⃣", "❤️", "🧑🏿‍💻", "🤷‍♀️", "🏴󠁧󠁢󠁳󠁣󠁴󠁿",
         "☕", "✨✨✨", "👩‍❤️‍💋‍👨", "\u2764\ufe0e"]
NUMBERS = ["0", "7", "42", "1234", "2024", "3.14159", "1,000,000", "-17", "+1e-10", "0xDEADBEEF",
           "12345678901234567890", "٠١٢٣٤٥٦٧٨٩", "१२३", "１２３", "²³¹", "½ ¾", "ⅠⅡⅫ", "𝟙𝟚𝟛",
           "v1.2.3", "$19.99", "50%", "3rd", "10:30pm", "2024-06-01T12:00:00Z"]
WHITESPACE = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", "\r\n\r\n", " \n ", "\n  ",
              "\u00a0", "\u3000", "\u2028", "\u2029", "\x0b", "\x0c", "\x85", "\u200b", "\u2009",
              " \t \n", "\ufeff", "\x1c\x1f"]
CODE = [
    "def f(x):\n    return x ** 2  # square\n",
    "for i in range(10):\n\tprint(f\"{i:03d}\")\n",
    "func encode(_ text: String) -> [Int] {\n    guard !text.isEmpty else { return [] }\n}\n",
    "#include <stdio.h>\nint main(void) { printf(\"%d\\n\", 42); return 0; }\n",
    "const add = (a, b) => a + b; // arrow\nconsole.log(add(1, 2));",
    "fn main() { let v: Vec<u8> = vec![0xFF; 16]; println!(\"{:?}\", v); }",
    "<div class=\"x\">&amp; &lt;tag&gt;</div>\n<!-- comment -->",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC;",
    "if [ -z \"$HOME\" ]; then echo 'no home' >&2; exit 1; fi",
    "{\"key\": [1, 2.5, null, true], \"nested\": {\"a\": \"b\"}}",
    "x=[[1,2],[3,4]]\r\ny = x[0][1]\r\n",
    "    indented\n        more\n\n\n    back   \n",
]
URLS = ["https://example.com/path?query=1&b=two#frag", "http://localhost:8080/", "mailto:a.b@c.org",
        "ftp://ftp.example.org/pub/file.tar.gz", "/usr/local/lib/libopenblas.so.0",
        "C:\\Users\\Name\\Documents\\file.txt", "git@github.com:owner/repo.git", "www.日本.jp/パス"]
PUNCT = ["!!!", "???", "...", "…", "?!?!", "—", "–", "--", "---", "***", "###", "@@", "~~~",
         "«»", "„“", "¿¡", "()[]{}<>", "\"'`", ";;", "::", "<|", "|>", "<|endoftext|", "<|im_"]
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<file_sep>"]
FRAGMENT_POOLS = [SENTENCES, WORDS, CONTRACTIONS, NAMES, SCRIPTS, EMOJI, NUMBERS, WHITESPACE, CODE, URLS,
                  PUNCT, SPECIAL]
# Blocks to draw random assigned characters from (start, end inclusive).
BLOCKS = [(0x20, 0x7E), (0xA0, 0x24F), (0x300, 0x36F), (0x370, 0x3FF), (0x400, 0x4FF),
          (0x530, 0x58F), (0x590, 0x5FF), (0x600, 0x6FF), (0x900, 0x97F), (0xE00, 0xE7F),
          (0x10A0, 0x10FF), (0x1100, 0x11FF), (0x2000, 0x206F), (0x2070, 0x209F), (0x20A0, 0x20BF),
          (0x2100, 0x218F), (0x2190, 0x22FF), (0x2460, 0x24FF), (0x2500, 0x257F), (0x3000, 0x303F),
          (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xFF00, 0xFFEF), (0x1D400, 0x1D7FF),
          (0x1F300, 0x1F64F), (0x1F900, 0x1F9FF)]


def assigned(cp):
    # Unassigned and private-use code points could be categorised differently by the Unicode
    # versions of Swift, Oniguruma and Rust; surrogates cannot be encoded at all.
    return unicodedata.category(chr(cp)) not in ("Cn", "Co", "Cs")


def make_corpus():
    rng = random.Random(SEED)
    corpus = [""]
    corpus += [chr(b) for b in range(256)]  # every single byte value as a character
    corpus += ["a" + chr(b) + "b" for b in range(0x80)]
    for pool in FRAGMENT_POOLS:
        corpus += list(pool)
    corpus += [w + c for w in ["it", "you", "they", "I", "IT", "we", "he"] for c in CONTRACTIONS]
    corpus += [" " * n + "x" + " " * m for n in range(5) for m in range(5)]
    corpus += ["x" + ws + "y" for ws in WHITESPACE] + ["x" + ws for ws in WHITESPACE]
    corpus += [ws + "1" for ws in WHITESPACE] + ["a" + ws + ws + "12" for ws in WHITESPACE]
    corpus += [n + " " + n for n in NUMBERS]
    corpus += [p + w for p in PUNCT for w in ["x", " x", "'s", "1"]]
    # Each regex rule at its edges: contractions of every case before letters, each kind of
    # whitespace before each class, newlines after punctuation, combining marks.
    corpus += [w + c + t for w in ["it", "IT", ""] for c in CONTRACTIONS for t in ["", "a", "the", "ONE", " x", "\n"]]
    corpus += [p + ws + t for p in ["", "x"] for ws in WHITESPACE for t in ["word", "1234", "!?", "'s", "é"]]
    corpus += [p + nl + t for p in ["!", ".", ";", "}"] for nl in ["\n", "\r\n", "\n\n", "\n \n", "\r"] for t in ["", "x", " x"]]
    corpus += ["e\u0301x", " \u0301x", "\u0301\u0301", "a\u0300b", "\u093e", " \u093e", "x\u20dd", "\u0e34\u0e35a"]
    # Random mixtures of every kind of fragment, joined with and without whitespace.
    for _ in range(1300):
        parts = []
        for _ in range(rng.randint(1, 8)):
            pool = rng.choice(FRAGMENT_POOLS)
            parts.append(rng.choice(pool))
            parts.append(rng.choice(["", " ", " ", " ", "  ", "\n", "\t", ", ", ". ", rng.choice(WHITESPACE)]))
        corpus.append("".join(parts))
    # Random characters from many blocks, with spaces and digits between.
    for _ in range(400):
        out = []
        for _ in range(rng.randint(1, 24)):
            lo, hi = rng.choice(BLOCKS)
            cp = rng.randint(lo, hi)
            if assigned(cp):
                out.append(chr(cp))
            if rng.random() < 0.2:
                out.append(rng.choice([" ", "  ", "1", "\n", "'s"]))
        corpus.append("".join(out))
    # A few long ones: cache and scanner stress.
    corpus.append(" ".join(rng.choice(WORDS) for _ in range(2000)))
    corpus.append("".join(rng.choice(SCRIPTS + EMOJI + NUMBERS) for _ in range(200)))
    corpus.append(" " * 3000 + "x")
    corpus.append("9" * 1000)
    # Keep one of each, in first-seen order.
    return list(dict.fromkeys(corpus))


# ---------------------------------------------------------------------------------------------
# Reference tokenizers

def bytes_to_unicode():
    """GPT-2's byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def byte_level(vocab, merges, pre_tokenizer, special, ignore_merges=False):
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in special])
    return tok


def gpt2_files():
    d = os.path.join(MODELS, "gpt2-tokenizer")
    vocab = json.load(open(os.path.join(d, "encoder.json"), encoding="utf-8"))
    lines = open(os.path.join(d, "vocab.bpe"), encoding="utf-8").read().split("\n")
    merges = [tuple(line.split(" ")) for line in lines[1:] if line]
    return d, vocab, merges


def gguf_vocab():
    from gguf import GGUFReader
    fields = GGUFReader(os.path.join(MODELS, GGUF_NAME)).fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    merges = [tuple(m.split(" ")) for m in fields["tokenizer.ggml.merges"].contents()]
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert fields["tokenizer.ggml.pre"].contents() == "smollm"
    alphabet = set(bytes_to_unicode().values())
    special = [t for t, ty in zip(tokens, types) if ty in (3, 4) and set(t) <= alphabet]
    return {t: i for i, t in enumerate(tokens)}, merges, special


def transformers_gpt2(d):
    """transformers' GPT-2 tokenizer from an HF-style directory holding OpenAI's files."""
    import shutil
    import tempfile
    from transformers import GPT2TokenizerFast
    with tempfile.TemporaryDirectory() as t:
        shutil.copy(os.path.join(d, "encoder.json"), os.path.join(t, "vocab.json"))
        shutil.copy(os.path.join(d, "vocab.bpe"), os.path.join(t, "merges.txt"))
        return GPT2TokenizerFast.from_pretrained(t)


def encode_all(tok, corpus):
    return [e.ids for e in tok.encode_batch(corpus, add_special_tokens=False)]


def decode_cases(tok, vocab_size, rng, count=400, favoured=(), pool=None):
    """Random id sequences, many of them cutting multi-byte characters apart; half the ids
    drawn from `favoured` (byte tokens) when it is given, the others from `pool` if given."""
    cases = []
    for _ in range(count):
        ids = [rng.choice(favoured) if favoured and rng.random() < 0.5
               else rng.choice(pool) if pool else rng.randrange(vocab_size)
               for _ in range(rng.randint(1, 6))]
        cases.append({"ids": ids, "text": tok.decode(ids, skip_special_tokens=False)})
    return cases


def pieces(tok, corpus):
    """Where each piece of each normalized string ends (null when the string holds an added token)."""
    added = [t.content for t in tok.get_added_tokens_decoder().values()]

    def ends(s):
        text = tok.normalizer.normalize_str(s) if tok.normalizer else s
        if tok.pre_tokenizer is None:
            return [len(text)] if text else []
        split = tok.pre_tokenizer.pre_tokenize_str(text)
        if isinstance(tok.pre_tokenizer, pre_tokenizers.Metaspace):
            # Its pieces gain a "▁" the offsets into the text do not count.
            return list(itertools.accumulate(len(piece) for piece, _ in split))
        return [end for _, (_, end) in split]
    return [None if any(a in s for a in added) else ends(s) for s in corpus]


def decoded(tok, corpus, ids, bos=None):
    """HF's decoding of each string's ids, less a leading BOS, where it is not the string."""
    out = {}
    for i, (s, row) in enumerate(zip(corpus, ids)):
        text = tok.decode(row[1:] if bos is not None and row[:1] == [bos] else row, skip_special_tokens=False)
        if text != s:
            out[str(i)] = text
    return out


GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
ASCII_SPACE = r"[ \t\n\r\x0b\x0c]"


def split_rules(pattern, digits=None):
    """A pre-tokenizer: optionally Digits, then an isolating Split and the byte-level mapping."""
    steps = [] if digits is None else [pre_tokenizers.Digits(individual_digits=digits)]
    return pre_tokenizers.Sequence(steps + [pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                                            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def mutants_of(pattern):
    """Near misses of a pattern: the mistakes a hand-written scanner could make."""
    contractions = "'s|'t|'re|'ve|'m|'ll|'d"
    out = {
        "no (?!\\S) lookahead": pattern.replace(r"|\s+(?!\S)", ""),
        "ASCII \\s": pattern.replace(r"\s", ASCII_SPACE),
        "marks as letters": pattern.replace(r"\p{L}+", r"[\p{L}\p{M}]+"),
        "curly apostrophe": pattern.replace("'", "['’]"),
    }
    if pattern.startswith("(?i:"):
        out["case-sensitive contractions"] = pattern.replace("(?i:", "(?:")
        out["ASCII-only case folding"] = pattern.replace(
            "(?i:" + contractions + ")", "'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]")
        out["unbounded digits"] = pattern.replace(r"\p{N}{1,3}", r"\p{N}+")
        out["no newline rule"] = pattern.replace(r"|\s*[\r\n]+", "")
        out["space-only prefix"] = pattern.replace(r"[^\r\n\p{L}\p{N}]?\p{L}+", r" ?\p{L}+")
        out["no newlines after punctuation"] = pattern.replace(r"+[\r\n]*", "+")
        out["digit runs"] = pattern.replace(r"|\p{N}|", r"|\p{N}+|")
    else:
        out["case-insensitive contractions"] = "(?i:" + contractions + ")" + pattern[len(contractions):]
        out["any whitespace as prefix"] = pattern.replace(" ?", r"\s?")
    return {label: variant for label, variant in out.items() if variant != pattern}


def check_corpus_separates(name, tok, corpus, variants):
    """Each variant pre-tokenizer must split some string of the corpus differently."""
    reference = pieces(tok, corpus)
    for label, variant in variants.items():
        original, tok.pre_tokenizer = tok.pre_tokenizer, variant
        differing = sum(a != b for a, b in zip(reference, pieces(tok, corpus)))
        tok.pre_tokenizer = original
        assert differing > 0, f"{name}: the corpus cannot tell the pre-tokenizer from '{label}'"
        print(f"  {name}: {differing} strings split differently under '{label}'")
    return reference


def skeleton(tok):
    """The tokenizer.json HF writes, with the vocabulary and merges emptied."""
    j = json.loads(tok.to_str())
    j["model"]["vocab"] = {}
    j["model"]["merges"] = []
    return j


def check_round_trip(name, tok, corpus, ids):
    """decode(encode(s)) == s, except that characters with a byte the vocabulary has no token
    for are dropped (SmolLM2 lacks 21 of the 256, such as \x04; HF has no unk token to use)."""
    vocab = tok.get_vocab()
    known = {b for b, c in bytes_to_unicode().items() if c in vocab}
    dropped = 0
    for s, i in zip(corpus, ids):
        kept = "".join(c for c in s if set(c.encode("utf-8")) <= known)
        dropped += kept != s
        assert tok.decode(i, skip_special_tokens=False) == kept, (name, s)
    print(f"{name}: round trip holds; {dropped} strings lose characters the vocabulary cannot spell")


def byte_tokens(tok):
    """The ids of a SentencePiece vocabulary's <0xNN> tokens."""
    vocab = tok.get_vocab()
    return [vocab[f"<0x{b:02X}>"] for b in range(256) if f"<0x{b:02X}>" in vocab]


def train(tok, corpus, vocab_size, **options):
    """Trains `tok`'s BPE model on the corpus; returns its vocabulary and merges."""
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, **options)
    tok.train_from_iterator(corpus, trainer)
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]


def llama2_style(corpus, metaspace):
    """A small SentencePiece-style BPE laid out as Llama-2's: <unk> <s> </s>, the 256 byte
    tokens, then the trained ones. Its rarer characters are left to byte fallback."""
    trainee = Tokenizer(models.BPE(unk_token="<unk>"))
    trainee.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    trained, merges = train(trainee, corpus, 1000, limit_alphabet=120)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for token, _ in sorted(trained.items(), key=lambda item: item[1]):
        vocab.setdefault(token, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    strip = [decoders.Strip(" ", 1, 0)]
    if metaspace:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
    else:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()] + strip)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in ("<unk>", "<s>", "</s>")])
    return tok


def gpt_neox_style(corpus):
    """A stand-in for GPT-NeoX-20B's tokenizer (Pythia's): byte-level BPE after NFC, with its
    special tokens first and runs of 2-24 spaces as added tokens matched after normalizing."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    train(tok, corpus, 1000, special_tokens=["<|endoftext|>", "<|padding|>"],
          initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in ("<|endoftext|>", "<|padding|>")])
    tok.add_tokens([AddedToken(" " * n, normalized=True, special=False) for n in range(24, 1, -1)])
    return tok


def qwen2_style(corpus):
    """A stand-in for Qwen2's tokenizer: NFC, Qwen2's Split regex then ByteLevel, and the chat
    special tokens after the vocabulary."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = split_rules(QWEN2_SPLIT)
    train(tok, corpus, 1000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True)
                            for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")])
    return tok


def sentencepiece_gguf(source, path):
    """A tokenizer-only GGUF file (tokenizer.ggml.model = llama, no merges) of the trained
    SentencePiece vocabulary in `source`, scored best-first as SentencePiece scores BPE pieces,
    for transformers' GGUF conversion to derive its merges from."""
    from gguf import GGUFWriter, TokenType
    import numpy as np
    vocab = json.load(open(source, encoding="utf-8"))["model"]["vocab"]
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda item: item[1])]
    types = [TokenType.CONTROL if t in ("<unk>", "<s>", "</s>") else TokenType.BYTE if t in byte_names
             else TokenType.NORMAL for t in tokens for byte_names in [{f"<0x{b:02X}>" for b in range(256)}]]
    writer = GGUFWriter(path, "llama")
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([-float(i) if ty == TokenType.NORMAL else 0.0 for i, ty in enumerate(types)])
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_tensor("token_embd.weight", np.zeros((1, 1), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"wrote {path} ({os.path.getsize(path) // 1024} KiB)")


def save_trained(name, tok):
    path = os.path.join(OUT, name, "tokenizer.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tok.save(path)
    print(f"wrote {path} ({os.path.getsize(path) // 1024} KiB)")


def write(name, obj):
    path = os.path.join(OUT, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {path} ({os.path.getsize(path) // 1024} KiB)")


def main():
    os.makedirs(OUT, exist_ok=True)
    corpus = make_corpus()
    assert len(corpus) >= 2000
    rng = random.Random(SEED + 1)
    write("corpus.json", {"seed": SEED, "strings": corpus})

    # GPT-2
    d, vocab, merges = gpt2_files()
    byte_pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    gpt2 = byte_level(vocab, merges, byte_pre, ["<|endoftext|>"])
    ids = encode_all(gpt2, corpus)
    check_round_trip("gpt2", gpt2, corpus, ids)
    assert [e.ids for e in transformers_gpt2(d)._tokenizer.encode_batch(corpus, add_special_tokens=False)] == ids, \
        "HF tokenizers and transformers disagree on GPT-2"
    assert ids[corpus.index(SENTENCES[0])] == [3260, 1757, 290, 5335, 1816, 284, 262, 3650, 11, 5335,
                                              2921, 257, 9294, 286, 7545, 284]
    variants = {k: split_rules(v) for k, v in mutants_of(GPT2_SPLIT).items()}
    write("gpt2.json", {"reference": "tokenizers BPE from encoder.json + vocab.bpe, ByteLevel",
                        "ids": ids, "decode": decode_cases(gpt2, len(vocab), rng),
                        "pieces": check_corpus_separates("gpt2", gpt2, corpus, variants),
                        "decoded": decoded(gpt2, corpus, ids),
                        "tokenizer_json": skeleton(gpt2)})

    # GPT-2's vocabulary behind Llama-3's Split pre-tokenizer.
    llama3 = byte_level(vocab, merges, split_rules(LLAMA3_SPLIT), ["<|endoftext|>"], ignore_merges=True)
    ids = encode_all(llama3, corpus)
    check_round_trip("gpt2-llama3", llama3, corpus, ids)
    variants = {k: split_rules(v) for k, v in mutants_of(LLAMA3_SPLIT).items()}
    write("gpt2-llama3.json", {"reference": "GPT-2 vocab + merges, Llama-3 Split, ignore_merges",
                               "ids": ids, "pieces": check_corpus_separates("gpt2-llama3", llama3, corpus, variants),
                               "decoded": decoded(llama3, corpus, ids),
                               "tokenizer_json": skeleton(llama3)})

    # SmolLM2
    vocab, merges, special = gguf_vocab()
    smol_pre = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    smol = byte_level(vocab, merges, smol_pre, special)
    ids = encode_all(smol, corpus)
    check_round_trip("smollm2", smol, corpus, ids)
    assert ids[corpus.index(SENTENCES[0])][1] == 2322 and ids[corpus.index(SENTENCES[0])][3] == 5099
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(MODELS, gguf_file=GGUF_NAME)
    differs = [i for i, s in enumerate(corpus) if hf.encode(s, add_special_tokens=False) != ids[i]]
    numeric = [i for i in differs if any(unicodedata.category(c).startswith("N") for c in corpus[i])]
    assert differs == numeric, f"transformers' GGUF tokenizer differs on non-numeric strings: {sorted(set(differs) - set(numeric))[:10]}"
    print(f"transformers' GGUF conversion (no Digits step) differs on {len(differs)} strings, all with digits")
    variants = {k: split_rules(v, digits=True) for k, v in mutants_of(GPT2_SPLIT).items()}
    variants["no Digits step"] = split_rules(GPT2_SPLIT)
    variants["digit runs"] = split_rules(GPT2_SPLIT, digits=False)
    write("smollm2.json", {"reference": "tokenizers BPE from the GGUF vocab + merges, Sequence[Digits(individual), ByteLevel]",
                           "transformers_gguf_differs": differs,
                           "ids": ids, "decode": decode_cases(smol, len(vocab), rng),
                           "pieces": check_corpus_separates("smollm2", smol, corpus, variants),
                           "decoded": decoded(smol, corpus, ids),
                           "tokenizer_json": skeleton(smol)})

    # Small tokenizers trained here, committed whole.
    for name, tok, bos, variants in [
        ("llama2-style", llama2_style(corpus, metaspace=False), 1, {}),
        ("llama2-metaspace", llama2_style(corpus, metaspace=True), 1, {}),
        ("gpt-neox-style", gpt_neox_style(corpus), None, {}),
        ("qwen2-style", qwen2_style(corpus), None, {k: split_rules(v) for k, v in mutants_of(QWEN2_SPLIT).items()}),
    ]:
        save_trained(name, tok)
        tok = Tokenizer.from_file(os.path.join(OUT, name, "tokenizer.json"))
        ids = [e.ids for e in tok.encode_batch(corpus, add_special_tokens=True)]
        write(f"{name}.json", {"reference": f"tokenizers from {name}/tokenizer.json", "ids": ids,
                               "decode": decode_cases(tok, tok.get_vocab_size(), rng, favoured=byte_tokens(tok)),
                               "decoded": decoded(tok, corpus, ids, bos),
                               "pieces": check_corpus_separates(name, tok, corpus, variants)})

    # The Llama-2-style vocabulary as a GGUF file, as transformers builds it from there.
    from transformers import AutoTokenizer
    directory = os.path.join(OUT, "llama-gguf")
    os.makedirs(directory, exist_ok=True)
    sentencepiece_gguf(os.path.join(OUT, "llama2-style", "tokenizer.json"), os.path.join(directory, "tokenizer.gguf"))
    hf = AutoTokenizer.from_pretrained(directory, gguf_file="tokenizer.gguf")
    tok = hf.backend_tokenizer
    ids = hf(corpus)["input_ids"]
    assert ids == [e.ids for e in tok.encode_batch(corpus, add_special_tokens=True)], "transformers and its backend differ"
    write("llama-gguf.json", {"reference": "transformers AutoTokenizer from llama-gguf/tokenizer.gguf", "ids": ids,
                              "decode": decode_cases(tok, tok.get_vocab_size(), rng, favoured=byte_tokens(tok)),
                              "decoded": decoded(tok, corpus, ids, 1),
                              "pieces": pieces(tok, corpus)})

    # Gemma 3, as transformers builds it from the GGUF file.
    gemma = AutoTokenizer.from_pretrained(MODELS, gguf_file=GEMMA_GGUF)
    tok = gemma.backend_tokenizer
    ids = gemma(corpus)["input_ids"]
    assert ids == [e.ids for e in tok.encode_batch(corpus, add_special_tokens=True)], "transformers and its backend differ"
    assert ids[corpus.index("The quick brown fox jumps over the lazy dog.")][0] == 2
    # Decode cases drawn from the ids the corpus gives, so that they spell the corpus's text
    # and not more of the vocabulary.
    seen = sorted({i for row in ids for i in row})
    write("gemma3.json", {"reference": f"transformers AutoTokenizer from {GEMMA_GGUF}", "ids": ids,
                          "decode": decode_cases(tok, tok.get_vocab_size(), rng, favoured=byte_tokens(tok), pool=seen),
                          "decoded": decoded(tok, corpus, ids, 2),
                          "pieces": pieces(tok, corpus)})


if __name__ == "__main__":
    sys.exit(main())
