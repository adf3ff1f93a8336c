/// The rewriting HF's normalizers do before text is split. They work on Unicode scalars, as HF
/// works on code points: Swift's Character and String comparisons would treat canonically
/// equivalent text as equal.
enum NormalizerStep: Sendable, Equatable {
    /// Unicode canonical composition (GPT-NeoX, Qwen2).
    case nfc
    /// Every occurrence of a literal, left to right (SentencePiece vocabularies: " " -> "▁").
    case replace(String, String)
    /// HF's Prepend: a prefix before text that is not empty (Llama-2's leading "▁").
    case prepend(String)

    static func apply(_ steps: [NormalizerStep], to text: String) -> String {
        steps.reduce(text) { text, step in step.apply(to: text) }
    }

    func apply(to text: String) -> String {
        switch self {
        case .nfc:
            // The standard library's own normalizer: Foundation's on Linux leaves Hangul
            // syllable + trailing jamo uncomposed.
            return String(decoding: text._nfcCodeUnits, as: UTF8.self)
        case .replace(let pattern, let content):
            return Self.replacing(pattern, with: content, in: text)
        case .prepend(let prefix):
            return text.isEmpty ? text : prefix + text
        }
    }

    static func replacing(_ pattern: String, with content: String, in text: String) -> String {
        let pattern = Array(pattern.unicodeScalars), scalars = Array(text.unicodeScalars)
        guard !pattern.isEmpty, scalars.count >= pattern.count else { return text }
        var out = String.UnicodeScalarView()
        var i = 0
        while i < scalars.count {
            if i + pattern.count <= scalars.count, scalars[i] == pattern[0], scalars[i..<(i + pattern.count)].elementsEqual(pattern) {
                out.append(contentsOf: content.unicodeScalars)
                i += pattern.count
            } else {
                out.append(scalars[i])
                i += 1
            }
        }
        return String(out)
    }
}

/// HF's Metaspace pre-tokenizer, less its optional split (a `SplitRule`): spaces become the
/// replacement character ("▁"), and one is put before a piece that does not start with it.
struct Metaspace: Sendable, Equatable {
    let replacement: Unicode.Scalar
    let prepend: Prepend

    enum Prepend: String, Sendable {
        /// Before every piece between added tokens.
        case always
        /// Before the piece the text starts with only.
        case first
        case never
    }

    func apply(_ text: String, atStart: Bool) -> String {
        let replaced = NormalizerStep.replacing(" ", with: String(replacement), in: text)
        let prepends = prepend == .always || (prepend == .first && atStart)
        guard prepends, replaced.unicodeScalars.first != replacement else { return replaced }
        return String(replacement) + replaced
    }
}
