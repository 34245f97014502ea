#!/usr/bin/env python3
"""Regenerates tests/fixtures/tokenizers: small tokenizers trained with the `tokenizers` library
in the shapes real models ship (Llama 3, Qwen2, GPT-2, Llama 2, Mistral, SmolLM2, DeepSeek V3, and
two of the word-splitting pre-tokenizers and normalizers), and the ids the library gives the test
text, which tests/text/test_tokenizer.cpp compares dume's tokenizer against. components/ holds one
model and, for each variant of normalizer and pre-tokenizer (every Split behaviour, inverted or
not, and each normalizer alone), the ids of a shorter text.

CI never runs this (it needs `pip install tokenizers`); the outputs are committed. The vocabularies
are small (under 1100 tokens) so each tokenizer.json stays well under 100 KB. The SentencePiece-style
vocabularies can differ from run to run (the trainer breaks ties in hash order); the expected ids
always come from the file as written.

    python3 tools/make_tokenizer_fixtures.py
"""
import json
import pathlib
import random

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "tokenizers"

# The pre-tokenizer regexes exactly as the models' tokenizer.json files carry them.
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# DeepSeek V3's three splits before its ByteLevel: numbers, CJK runs, then words and the rest.
DEEPSEEK3_PATTERNS = [
    r"\p{N}{1,3}",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",  # literal characters in the file
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+",
]
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# More training text, so that the vocabularies are not only the test text's words.
EXTRA = """\
In the beginning the Universe was created. This has made a lot of people very angry.
It is a truth universally acknowledged, that a single man in possession of a good fortune must be in want of a wife.
Der Wissenschaftler untersucht die Zusammenhänge zwischen Sprache und Denken.
Le gouvernement français a annoncé de nouvelles mesures économiques.
Все счастливые семьи похожи друг на друга, каждая несчастливая семья несчастлива по-своему.
人工智能正在改变世界。语言模型可以生成文本。
for i in range(10):
    print(i, i * i)
while (x > 0) { x -= step; }
return {"key": value, "list": [1, 2, 3]}
"""

EDGE_CASES = [
    "", " ", "  ", "\n", "\n\n\n", "\t", "a", "  leading spaces", "trailing spaces   ", "\t\t tabbed",
    "line\r\nwindows\r\n", "\x85\x85b", "\u180e\u180eb", "a\u00a0\u00a0b", "\u2007\u2007b x\u2028\u2028y",
    "x'ſ y'S I'M don't THEY'LL we'Ve", "cafe\u0301 café Cafe\u0301", "Jupyter jupyter Jupyter's",
    "<s><s></s>", "<|begin_of_text|><|begin_of_text|>hi<|eot_id|>", " <mask> x<mask>y  <mask>",
    "<sw> a<sw>b <sw>", "<tool_call>\n<tool_call>x", "[INST][/INST] [INST]x", "<|im_start|>system\n<|im_end|>",
    " " * 300 + "x", "\n" * 50 + "y", "ab" * 200, "🇫🇷" * 20, "1234567890123", "\u0301\u0301 lonely accents",
    "\U0001F9D1\U0001F3FF\u200D\U0001F4BB", "\ufeffbom", "nul\x00byte", "\x7f\x01\x1b[0m",
]


def training_lines():
    text = (OUT / "text.txt").read_text(encoding="utf-8")
    return text.splitlines() + EXTRA.splitlines()


def byte_level_model(pre_tokenizer, vocab_size, ignore_merges, lines=None):
    """Trained on `lines` (default: the test text and EXTRA); tools/bench_tokenizer.py trains its
    large vocabularies here too."""
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(lines or training_lines(), trainer)
    return tok


def split_byte_level(pattern):
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])


def llama3(vocab_size=900, lines=None):
    tok = byte_level_model(split_byte_level(LLAMA3_PATTERN), vocab_size, ignore_merges=True, lines=lines)
    tok.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                            "<|eot_id|>"])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)]),
    ])
    return json.loads(tok.to_str())


def qwen2():
    tok = byte_level_model(split_byte_level(QWEN2_PATTERN), 800, ignore_merges=False)
    tok.normalizer = normalizers.NFC()
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    # Qwen2's tool tokens are added, not special, and matched in the raw text; "café" is matched
    # after NFC (normalized=True), so the decomposed spelling finds it too.
    tok.add_tokens([AddedToken("<tool_call>", special=False, normalized=False),
                    AddedToken("café", special=False, normalized=True)])
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    return json.loads(tok.to_str())


def gpt2():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<s>", "</s>", "<|endoftext|>"], show_progress=False)
    tok.train_from_iterator(training_lines(), trainer)
    # RoBERTa's <mask> takes the space before it; <sw> only matches as a word of its own; <r>
    # takes the spaces after it.
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, special=True)])
    tok.add_tokens([AddedToken("<sw>", single_word=True, normalized=False),
                    AddedToken("Jupyter", rstrip=True, normalized=False)])
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                      ("<s>", tok.token_to_id("<s>")))
    data = json.loads(tok.to_str())
    # GPT-2's file has its merges as "a b" strings.
    data["model"]["merges"] = [" ".join(pair) for pair in data["model"]["merges"]]
    return data


def with_byte_tokens(tok):
    """The trained tokenizer's file laid out as SentencePiece's: <unk> <s> </s> (special), the 256
    byte fallback tokens <0xXX>, then the trained pieces."""
    data = json.loads(tok.to_str())
    trained = sorted(data["model"]["vocab"].items(), key=lambda item: item[1])
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    pieces += [token for token, _ in trained if token not in ("<unk>", "<s>", "</s>")]
    data["model"]["vocab"] = {token: i for i, token in enumerate(pieces)}
    data["added_tokens"] = [{"id": i, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": True} for i, token in enumerate(pieces[:3])]
    return data


def sentencepiece_bpe(vocab_size, extra_specials):
    """A SentencePiece-style BPE: <unk> <s> </s>, the 256 byte tokens, then the trained pieces."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    # Leaving out rare characters makes the byte fallback do its work.
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  limit_alphabet=160, show_progress=False)
    tok.train_from_iterator(training_lines(), trainer)
    data = with_byte_tokens(tok)
    for k, token in enumerate(extra_specials):
        data["added_tokens"].append({"id": len(data["model"]["vocab"]) + k, "content": token, "single_word": False,
                                     "lstrip": False, "rstrip": False, "normalized": False, "special": True})
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
    }
    data["decoder"] = None
    return data


def canonical(data):
    """The file as the library writes it back: added tokens with the ids it gives them (a token
    the model already has keeps the model's id)."""
    return json.loads(Tokenizer.from_str(json.dumps(data)).to_str())


def llama2():
    data = sentencepiece_bpe(700, [])
    # Llama 2's conversion: the normalizer writes the word boundaries, no pre-tokenizer.
    data["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
    ]}
    data["pre_tokenizer"] = None
    # A normalized added token: matched as the normalizer writes it ("▁Jupyter").
    data["added_tokens"].append({"id": len(data["model"]["vocab"]), "content": "Jupyter", "single_word": False,
                                 "lstrip": False, "rstrip": False, "normalized": True, "special": False})
    data = canonical(data)
    data["model"]["merges"] = [" ".join(pair) for pair in data["model"]["merges"]]
    return data


def mistral():
    data = sentencepiece_bpe(600, ["[INST]", "[/INST]"])
    # Newer conversions: no normalizer, a Metaspace pre-tokenizer that prepends to the first piece.
    data["normalizer"] = None
    data["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
    # Without the lead bytes of 4-byte UTF-8, characters above U+FFFF (emoji) that are not in the
    # vocabulary fall back to <unk>, fused: the path Llama 2 never takes.
    for lead in range(0xF0, 0xF5):
        del data["model"]["vocab"][f"<0x{lead:02X}>"]
    return canonical(data)


def digits_byte_level():
    return pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])


def smollm2(vocab_size=800, lines=None):
    """SmolLM2's (and StarCoder's): every digit a piece of its own, then GPT-2's regex."""
    tok = byte_level_model(digits_byte_level(), vocab_size, ignore_merges=False, lines=lines)
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True)
    return json.loads(tok.to_str())


def deepseek3():
    """DeepSeek V3's: three isolating regex splits, then ByteLevel without its own regex."""
    tok = byte_level_model(pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False) for pattern in DEEPSEEK3_PATTERNS]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)]), 800,
        ignore_merges=False)
    bos = "<｜begin▁of▁sentence｜>"
    tok.add_special_tokens([bos, "<｜end▁of▁sentence｜>"])
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                      special_tokens=[(bos, tok.token_to_id(bos))]),
    ])
    return json.loads(tok.to_str())


def word_model(pre_tokenizer, vocab_size, normalizer=None):
    """A BPE over words (no byte-level map, SentencePiece's byte fallback), <s> $A </s> around."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  limit_alphabet=160, show_progress=False)
    tok.train_from_iterator(training_lines(), trainer)
    # The special tokens keep their ids (0, 1, 2) in with_byte_tokens' layout.
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 2)])
    return canonical(with_byte_tokens(tok))


def whitespace():
    r"""Whitespace (\w+|[^\w\s]+) after the normalizers an uncased model chains."""
    return word_model(pre_tokenizers.Whitespace(), 900, normalizers.Sequence([
        normalizers.NFKC(), normalizers.Lowercase(), normalizers.Strip(),
        normalizers.Replace(Regex(r"\p{N}+"), "0"),
    ]))


def punctuation():
    """WhitespaceSplit, then runs of punctuation and of digits as pieces of their own."""
    return word_model(pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="contiguous"),
        pre_tokenizers.Digits(individual_digits=False),
    ]), 900)


BEHAVIOURS = ["removed", "isolated", "merged_with_previous", "merged_with_next", "contiguous"]
COMPONENT_TEXTS = [
    "Hello, World!! 3.14159 and 42nd -- ok?...",
    "  Leading and trailing \t spaces  ",
    "ﬁne ①②③ ＡＢＣ ½ x² Ⅻ ٣٤ 〇 ㍿",
    "İstanbul ΣΟΦΟΣ ὈΔΥΣΣΕΎΣ Straße ǅ Ǆ ẞ",
    "a--b__c (x) [y] {z} «q» ‘r’ — ¿¡ $5 +1 <tag> ^_^ `c` |p| ~@#%&*/\\",
    "naïve cafe\u0301 \u00a0nbsp\u2003em\u3000ideo\u200dzwj a\u0301\u0301",
    "你好，世界。１２３ 東京は日本の首都です。",
    "Numbers: 0, 42, 1234567, -2.5e-10, 0x1F, 1,000,000 and 12:30:45.",
    "Москва — столица России. مرحبا بالعالم، ١٢٣.",
    "Emoji: 😀 👍🏽 🇫🇷 1️⃣ #️⃣ tab\there\nnew\r\nline   ",
    "",
]


def component_variants():
    """(name, normalizer, pre-tokenizer) for each component alone, or in the pairs that interact."""
    variants = []
    for behaviour in BEHAVIOURS:
        for invert in (False, True):
            variants.append((f"split_regex_{behaviour}_{'inverted' if invert else 'plain'}", None,
                             pre_tokenizers.Split(Regex(r"\s+|[,.!?]"), behavior=behaviour, invert=invert)))
        variants.append((f"split_string_{behaviour}", None, pre_tokenizers.Split(" ", behavior=behaviour)))
        variants.append((f"punctuation_{behaviour}", None, pre_tokenizers.Punctuation(behavior=behaviour)))
    variants += [
        ("split_empty_matches", None, pre_tokenizers.Split(Regex("a*"), behavior="isolated")),
        ("split_lookahead", None, pre_tokenizers.Split(Regex("(?=[A-Z])"), behavior="merged_with_next")),
        ("digits_individual", None, pre_tokenizers.Digits(individual_digits=True)),
        ("digits_contiguous", None, pre_tokenizers.Digits(individual_digits=False)),
        ("whitespace", None, pre_tokenizers.Whitespace()),
        ("whitespace_split", None, pre_tokenizers.WhitespaceSplit()),
        ("nfkc", normalizers.NFKC(), None),
        ("lowercase", normalizers.Lowercase(), None),
        ("strip", normalizers.Strip(), None),
        ("strip_left", normalizers.Strip(left=True, right=False), None),
        ("strip_right", normalizers.Strip(left=False, right=True), None),
        ("replace_regex", normalizers.Replace(Regex(r"\s+"), " "), None),
        ("replace_regex_empty_matches", normalizers.Replace(Regex("a*"), "-"), None),
        ("replace_empty_string", normalizers.Replace("", "_"), None),
        # Metaspace's "first" prepends only where the text starts, which stripping moves.
        ("strip_then_metaspace_first", normalizers.Strip(),
         pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)),
        ("replace_start_then_metaspace_first", normalizers.Replace(Regex("^[A-Z]"), ""),
         pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)),
        ("normalizer_sequence", normalizers.Sequence([
            normalizers.NFKC(), normalizers.Lowercase(), normalizers.Strip(), normalizers.Replace(Regex(r"\s+"), " "),
            normalizers.Prepend("▁")]), pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                                  pre_tokenizers.Punctuation()])),
    ]
    return variants


def components():
    """One model; per variant its normalizer, pre-tokenizer and the ids of each COMPONENT_TEXTS."""
    # Trained without a pre-tokenizer, so that its merges take spaces and punctuation in too and
    # each way of cutting the text gives other ids.
    data = word_model(None, 500)
    data["post_processor"] = None
    variants = []
    for name, normalizer, pre_tokenizer in component_variants():
        tok = Tokenizer.from_str(json.dumps(data))
        tok.normalizer = normalizer
        tok.pre_tokenizer = pre_tokenizer
        written = json.loads(tok.to_str())
        variants.append({"name": name, "normalizer": written["normalizer"], "pre_tokenizer": written["pre_tokenizer"],
                         "ids": [tok.encode(text).ids for text in COMPONENT_TEXTS]})
    return data, {"texts": COMPONENT_TEXTS, "variants": variants}


def cases(tok, text):
    rng = random.Random(1234)
    chars = list(text)
    shuffled = ["".join(rng.choice(chars) for _ in range(400)) for _ in range(3)]
    words = text.split(" ")
    jumbled = [" ".join(rng.choice(words) for _ in range(120)) for _ in range(3)]
    inputs = [text] + text.split("\n") + EDGE_CASES + shuffled + jumbled
    out = []
    for s in inputs:
        out.append({"text": s, "ids": tok.encode(s, add_special_tokens=False).ids,
                    "ids_document": tok.encode(s).ids})
    return out


def main():
    text = (OUT / "text.txt").read_text(encoding="utf-8")
    for family, build in [("llama3", llama3), ("qwen2", qwen2), ("gpt2", gpt2), ("llama2", llama2),
                          ("mistral", mistral), ("smollm2", smollm2), ("deepseek3", deepseek3),
                          ("whitespace", whitespace), ("punctuation", punctuation)]:
        data = build()
        serialized = json.dumps(data, ensure_ascii=False, indent=1)
        tok = Tokenizer.from_str(serialized)  # the ids come from the file as written
        (OUT / family).mkdir(parents=True, exist_ok=True)
        (OUT / family / "tokenizer.json").write_text(serialized + "\n", encoding="utf-8")
        # dume's vocab_size is one more than the largest id (the library counts the tokens).
        vocab_size = max(tok.get_vocab(with_added_tokens=True).values()) + 1
        expected = {"family": family, "vocab_size": vocab_size,
                    "cases": cases(tok, text)}
        (OUT / family / "expected.json").write_text(json.dumps(expected, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"{family}: {len(data['model']['vocab'])} model tokens, {len(data['model']['merges'])} merges, "
              f"{len(serialized) // 1024} KB")

    data, expected = components()
    (OUT / "components").mkdir(parents=True, exist_ok=True)
    (OUT / "components" / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n",
                                                       encoding="utf-8")
    (OUT / "components" / "expected.json").write_text(
        json.dumps(expected, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"components: {len(expected['variants'])} variants")


if __name__ == "__main__":
    main()
