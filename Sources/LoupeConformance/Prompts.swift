import LoupeModels

/// The prompts the intervention and sweep checks run: made from the model's vocabulary
/// alone, the same for every run, so any fixture serves.
struct ConformancePrompts {
    /// 8 tokens each; corrupted differs from clean at positions 3 and 6, third everywhere.
    let clean: [Int]
    let corrupted: [Int]
    let third: [Int]
    /// Mean-ablation references, as long as clean.
    let references: [[Int]]
    /// 11 tokens: longer than the others, so they are left-padded in a batch with it.
    let longer: [Int]
    /// A shorter pair (4 tokens) for sweeps over pairs of different lengths.
    let shortClean: [Int]
    let shortCorrupted: [Int]
    /// Two distinct answer tokens.
    let answer: Int
    let wrong: Int

    static let length = 8
    /// What sweeps run on: their plain path costs a full pass per cell, and a
    /// head-by-position sweep has heads x positions cells per layer.
    static let sweepLength = 6

    /// The prompts cut to their first `sweepLength` tokens (corrupted then differs at 3).
    func forSweeps() -> (clean: [Int], corrupted: [Int], references: [[Int]]) {
        (Array(clean.prefix(Self.sweepLength)), Array(corrupted.prefix(Self.sweepLength)),
         references.map { Array($0.prefix(Self.sweepLength)) })
    }

    init(vocabulary: Int) {
        var generator = SplitMix(seed: 0x5EED_C0DE)
        func next() -> Int { Int(generator.next() % UInt64(vocabulary)) }
        func prompt(_ count: Int) -> [Int] { (0..<count).map { _ in next() } }
        /// `tokens` with the tokens at `positions` replaced by other ones.
        func changed(_ tokens: [Int], at positions: [Int]) -> [Int] {
            var out = tokens
            for p in positions { out[p] = (tokens[p] + 1 + next() % max(vocabulary - 1, 1)) % vocabulary }
            return out
        }
        clean = prompt(Self.length)
        corrupted = changed(clean, at: [3, 6])
        third = changed(clean, at: Array(0..<Self.length))
        references = [changed(clean, at: [0, 2, 5, 7]), changed(clean, at: [1, 3, 4, 6])]
        longer = prompt(Self.length + 3)
        shortClean = prompt(4)
        shortCorrupted = changed(shortClean, at: [2])
        answer = next()
        wrong = (answer + 1 + next() % max(vocabulary - 1, 1)) % vocabulary
    }
}
