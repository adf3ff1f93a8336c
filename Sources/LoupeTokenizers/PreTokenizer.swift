/// The split rules of the pre-tokenizers Loupe implements, written as scanners over Unicode
/// scalars. They reproduce, match for match, the Oniguruma regexes HF `tokenizers` runs
/// (leftmost alternative first, greedy runs, backtracking only where the pattern needs it);
/// Swift's Regex would be slower and classifies characters differently.

/// The character classes the patterns use: `\p{L}`, `\p{N}`, `\s` and everything else.
/// Combining marks (Mn, Mc, Me) are not letters, so they fall under `other`, as in the regexes.
enum CharacterClass: UInt8 {
    case letter, number, space, other

    init(_ scalar: Unicode.Scalar) {
        if scalar.isASCII {
            self = Self.ascii[Int(scalar.value)]
            return
        }
        // Oniguruma's `\s` is the White_Space property (Zs, Zl, Zp, U+0085 ...), as is Swift's.
        if scalar.properties.isWhitespace {
            self = .space
            return
        }
        switch scalar.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter:
            self = .letter
        case .decimalNumber, .letterNumber, .otherNumber:
            self = .number
        default:
            self = .other
        }
    }

    private static let ascii: [CharacterClass] = (0..<128).map { value in
        switch UInt8(value) {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"): .letter
        case UInt8(ascii: "0")...UInt8(ascii: "9"): .number
        case 0x09...0x0D, 0x20: .space   // \t \n \v \f \r and space; 0x1C-0x1F are not \s
        default: .other
        }
    }
}

/// Text prepared for scanning: its scalars, their classes and where each starts in the UTF-8.
struct ScannedText {
    let scalars: [Unicode.Scalar]
    let classes: [CharacterClass]
    /// `utf8Offsets[i]` is where scalar `i` starts in `utf8`; one more entry marks the end.
    let utf8Offsets: [Int]
    let utf8: [UInt8]

    init(_ text: String) {
        var scalars: [Unicode.Scalar] = []
        var classes: [CharacterClass] = []
        var offsets: [Int] = []
        let utf8 = Array(text.utf8)
        scalars.reserveCapacity(utf8.count)
        classes.reserveCapacity(utf8.count)
        offsets.reserveCapacity(utf8.count + 1)
        var offset = 0
        for scalar in text.unicodeScalars {
            scalars.append(scalar)
            classes.append(CharacterClass(scalar))
            offsets.append(offset)
            offset += UTF8.width(scalar)
        }
        offsets.append(offset)
        self.scalars = scalars
        self.classes = classes
        self.utf8Offsets = offsets
        self.utf8 = utf8
    }

    var count: Int { scalars.count }

    /// The UTF-8 bytes of the scalars in `range`.
    func bytes(_ range: Range<Int>) -> ArraySlice<UInt8> {
        utf8[utf8Offsets[range.lowerBound]..<utf8Offsets[range.upperBound]]
    }

    /// The scalars in `range` as a String.
    func string(_ range: Range<Int>) -> String { String(String.UnicodeScalarView(scalars[range])) }

    /// The end of the run of `kind` characters that starts at `i` (not past `end`).
    func run(of kind: CharacterClass, from i: Int, to end: Int) -> Int {
        var j = i
        while j < end, classes[j] == kind { j += 1 }
        return j
    }

    func isNewline(_ i: Int) -> Bool { scalars[i] == "\r" || scalars[i] == "\n" }
}

/// One step of a pre-tokenizer: cuts a piece of text into smaller pieces. Pieces are ranges of
/// scalar indices; every step keeps all characters (HF's "Isolated" behaviour).
enum SplitRule: Sendable, Equatable {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`:
    /// GPT-2's pattern, which HF's ByteLevel pre-tokenizer runs when `use_regex` is set.
    case gpt2
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    case llama3
    /// Qwen2's pattern: Llama-3's with `\p{N}` for `\p{N}{1,3}`, one digit a piece.
    case qwen2
    /// A Split on a literal string: each match kept apart (`isolated`), or ending the piece
    /// before it (`mergedWithPrevious`, Gemma's " "), or starting the next (`mergedWithNext`,
    /// Metaspace's "▁").
    case literal([Unicode.Scalar], Behaviour)

    enum Behaviour: String, Sendable {
        case isolated = "Isolated"
        case mergedWithPrevious = "MergedWithPrevious"
        case mergedWithNext = "MergedWithNext"
    }
    /// HF's Digits pre-tokenizer: numeric characters (`\p{N}`) apart from the rest, one per piece
    /// when `individual`, else in runs.
    case digits(individual: Bool)

    /// The regex patterns (as they appear in tokenizer.json Split steps) Loupe recognises.
    static func recognising(pattern: String) -> SplitRule? {
        let gpt2 = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"#
        let llama3 = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
        let qwen2 = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
        switch pattern {
        // With Isolated splitting, text no alternative matches becomes a piece of its own, and
        // that is exactly what the trailing `|\s+` would match: both spellings are one rule.
        case gpt2, gpt2 + #"|\s+"#: return .gpt2
        case llama3: return .llama3
        case qwen2: return .qwen2
        default: return nil
        }
    }

    func split(_ text: ScannedText, _ piece: Range<Int>, into out: inout [Range<Int>]) {
        switch self {
        case .digits(let individual):
            var i = piece.lowerBound
            while i < piece.upperBound {
                let isNumber = text.classes[i] == .number
                var j = i + 1
                if !(isNumber && individual) {
                    while j < piece.upperBound, (text.classes[j] == .number) == isNumber { j += 1 }
                }
                out.append(i..<j)
                i = j
            }
        case .gpt2, .llama3, .qwen2:
            var i = piece.lowerBound
            while i < piece.upperBound {
                let j = switch self {
                case .gpt2: Self.gpt2Match(text, at: i, end: piece.upperBound)
                case .qwen2: Self.llama3Match(text, at: i, end: piece.upperBound, digits: 1)
                default: Self.llama3Match(text, at: i, end: piece.upperBound, digits: 3)
                }
                out.append(i..<j)
                i = j
            }
        case .literal(let pattern, let behaviour):
            var start = piece.lowerBound
            var i = piece.lowerBound
            while i + pattern.count <= piece.upperBound {
                guard text.scalars[i..<(i + pattern.count)].elementsEqual(pattern) else {
                    i += 1
                    continue
                }
                let end = i + pattern.count
                switch behaviour {
                case .isolated:
                    if start < i { out.append(start..<i) }
                    out.append(i..<end)
                    start = end
                case .mergedWithPrevious:
                    out.append(start..<end)
                    start = end
                case .mergedWithNext:
                    if start < i { out.append(start..<i) }
                    start = i
                }
                i = end
            }
            if start < piece.upperBound { out.append(start..<piece.upperBound) }
        }
    }

    /// The end of GPT-2's match at `i`.
    private static func gpt2Match(_ text: ScannedText, at i: Int, end: Int) -> Int {
        if let length = contraction(text, at: i, end: end, ignoringCase: false) { return i + length }
        // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: an optional space, then a run of one class.
        var start = i
        if text.scalars[i] == " ", i + 1 < end, text.classes[i + 1] != .space { start = i + 1 }
        let kind = text.classes[start]
        if kind != .space { return text.run(of: kind, from: start, to: end) }
        return whitespace(text, at: i, end: end)
    }

    /// The end of Llama-3's match at `i` (Qwen2's with `digits` 1).
    private static func llama3Match(_ text: ScannedText, at i: Int, end: Int, digits: Int) -> Int {
        if let length = contraction(text, at: i, end: end, ignoringCase: true) { return i + length }
        let kind = text.classes[i]
        // `[^\r\n\p{L}\p{N}]?\p{L}+`: letters, after at most one character that is not a
        // newline, letter or digit (a space, a tab, a quote ...).
        if kind == .letter { return text.run(of: .letter, from: i, to: end) }
        if kind != .number, !text.isNewline(i), i + 1 < end, text.classes[i + 1] == .letter {
            return text.run(of: .letter, from: i + 1, to: end)
        }
        // `\p{N}{1,3}`
        if kind == .number { return min(text.run(of: .number, from: i, to: end), i + digits) }
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
        var start = i
        if text.scalars[i] == " ", i + 1 < end, text.classes[i + 1] == .other { start = i + 1 }
        if text.classes[start] == .other {
            var j = text.run(of: .other, from: start, to: end)
            while j < end, text.isNewline(j) { j += 1 }
            return j
        }
        // `\s*[\r\n]+`: the greedy `\s*` gives back characters until a newline follows, so the
        // match ends just after the last newline of the whitespace run.
        let runEnd = text.run(of: .space, from: i, to: end)
        if let lastNewline = (i..<runEnd).last(where: text.isNewline) { return lastNewline + 1 }
        return whitespace(text, at: i, end: end)
    }

    /// `\s+(?!\S)|\s+` at a whitespace character: a run of whitespace, less its last character
    /// when something other than whitespace follows, so that character can lead the next word.
    private static func whitespace(_ text: ScannedText, at i: Int, end: Int) -> Int {
        let runEnd = text.run(of: .space, from: i, to: end)
        return runEnd < end && runEnd - 1 > i ? runEnd - 1 : runEnd
    }

    /// The length of `'s|'t|'re|'ve|'m|'ll|'d` at `i`, if one is there. Ignoring case follows
    /// Oniguruma's case folding, under which the long s `ſ` is an `s` too.
    private static func contraction(_ text: ScannedText, at i: Int, end: Int, ignoringCase: Bool) -> Int? {
        guard text.scalars[i] == "'", i + 1 < end else { return nil }
        func letter(_ k: Int) -> Unicode.Scalar? {
            guard k < end else { return nil }
            let scalar = text.scalars[k]
            guard ignoringCase else { return scalar }
            if scalar == "\u{17F}" { return "s" }
            return scalar.isASCII ? Unicode.Scalar(UInt8(ascii: scalar).lowercased) : scalar
        }
        switch letter(i + 1) {
        case "s", "t", "m", "d": return 2
        case "r", "v": return letter(i + 2) == "e" ? 3 : nil
        case "l": return letter(i + 2) == "l" ? 3 : nil
        default: return nil
        }
    }
}

private extension UInt8 {
    var lowercased: UInt8 { (0x41...0x5A).contains(self) ? self | 0x20 : self }
}
