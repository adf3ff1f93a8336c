/// Added (special) tokens such as `<|endoftext|>`, found as whole strings in the text before
/// pre-tokenization, leftmost first and longest at a position, as HF's added vocabulary does.
struct AddedTokenMatcher: Sendable {
    /// For each first scalar: the tokens that start with it, longest first.
    private let candidates: [Unicode.Scalar: [(scalars: [Unicode.Scalar], id: Int)]]

    init(_ tokens: [(content: String, id: Int)]) {
        var candidates: [Unicode.Scalar: [(scalars: [Unicode.Scalar], id: Int)]] = [:]
        for token in tokens {
            let scalars = Array(token.content.unicodeScalars)
            guard let first = scalars.first else { continue }
            candidates[first, default: []].append((scalars, token.id))
        }
        self.candidates = candidates.mapValues { $0.sorted { $0.scalars.count > $1.scalars.count } }
    }

    var isEmpty: Bool { candidates.isEmpty }

    enum Segment {
        case text(Range<Int>)
        case token(Int)
    }

    /// `range` of the text cut into plain stretches and added tokens.
    func segments(_ text: ScannedText, in range: Range<Int>) -> [Segment] {
        guard !candidates.isEmpty else { return range.isEmpty ? [] : [.text(range)] }
        var out: [Segment] = []
        var plainStart = range.lowerBound
        var i = range.lowerBound
        while i < range.upperBound {
            guard let match = candidates[text.scalars[i]]?.first(where: { matches($0.scalars, text, at: i, end: range.upperBound) }) else {
                i += 1
                continue
            }
            if plainStart < i { out.append(.text(plainStart..<i)) }
            out.append(.token(match.id))
            i += match.scalars.count
            plainStart = i
        }
        if plainStart < range.upperBound { out.append(.text(plainStart..<range.upperBound)) }
        return out
    }

    private func matches(_ token: [Unicode.Scalar], _ text: ScannedText, at i: Int, end: Int) -> Bool {
        guard i + token.count <= end else { return false }
        for k in 1..<token.count where text.scalars[i + k] != token[k] { return false }
        return true
    }
}
