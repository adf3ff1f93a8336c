import LoupeTokenizers

/// The text each generated row adds at a step: its new ids decoded as a whole, less what was
/// sent before. An incomplete UTF-8 character at the end (decoded as U+FFFD) is held back
/// until a later token completes it, or the row stops.
struct TextDeltas {
    let tokenizer: Tokenizer?
    private var sent: [String.UnicodeScalarView]

    init(tokenizer: Tokenizer?, rows: Int) {
        self.tokenizer = tokenizer
        sent = Array(repeating: "".unicodeScalars, count: rows)
    }

    /// Each row's new text, given every row's ids so far and which rows have stopped.
    mutating func advance(_ tokens: [[Int]], stopped: [Bool]) -> [String] {
        guard let tokenizer else { return Array(repeating: "", count: tokens.count) }
        return tokens.indices.map { row in
            var text = tokenizer.decode(tokens[row]).unicodeScalars
            if !stopped[row] { while text.last == "\u{FFFD}" { text.removeLast() } }
            guard text.starts(with: sent[row]), text.count > sent[row].count else { return "" }
            let delta = String(String.UnicodeScalarView(text.dropFirst(sent[row].count)))
            sent[row] = text
            return delta
        }
    }
}
