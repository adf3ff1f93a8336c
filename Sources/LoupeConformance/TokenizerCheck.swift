import LoupeModels
import LoupeTokenizers

/// The `tokenizer` check: text survives encoding and decoding, and every id it makes has
/// an embedding row.
enum TokenizerCheck {
    /// Plain prose, punctuation, accents and other scripts, emoji, runs of whitespace, code.
    static let strings = [
        "Hello, world!",
        "After John and Mary went to the store, Mary gave a bottle of milk to",
        "Café au lait, naïve façade — 東京タワー 🚀 costs €5",
        "  leading spaces,\ttabs\tand\n\nnewlines   then",
        "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    ]

    static func run(_ c: inout CheckContext) throws {
        guard let tokenizer = c.tokenizer else {
            return c.fail("the model has no tokenizer and the fixture does not declare one absent (conformance.json: {\"not_applicable\": {\"tokenizer\": \"why\"}})")
        }
        let vocabulary = c.model.dimensions.vocabulary
        for text in strings + c.fixture.tokenizerStrings {
            let ids = tokenizer.encode(text)
            if let bad = ids.first(where: { $0 < 0 || $0 >= vocabulary }) {
                c.fail("encoding \(text.debugDescription) gives id \(bad), outside the model's \(vocabulary) embedding rows")
            }
            let decoded = tokenizer.decode(ids)
            if decoded != text {
                c.fail("decode(encode(\(text.debugDescription))) is \(decoded.debugDescription)")
            }
        }
        c.note("\(strings.count + c.fixture.tokenizerStrings.count) strings round-trip")
    }

    /// A fixture that declares it has no tokenizer must have none.
    static func checkDeclaredAbsent(_ c: inout CheckContext) {
        if c.tokenizer != nil {
            c.fail("conformance.json declares no tokenizer, but the model loaded one")
        }
    }
}
