import ArgumentParser
import BuiltInPlugins
import Foundation
import LoupeModels
import LoupeTensor

@main
struct Loupe: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Loupe: an interpretability workbench for transformer language models.",
        subcommands: [IOI.self, Serve.self, Ps.self, Load.self, Unload.self, Describe.self, Tokenize.self, Run.self, Generate.self, Patch.self, Heads.self, Stop.self, Keygen.self, Conformance.self])
}

/// The default model: SmolLM2-135M-Instruct, fetched from PyPI by scripts/fetch-models.sh.
let defaultModel = (ProcessInfo.processInfo.environment["LOUPE_MODELS"] ?? (NSHomeDirectory() + "/.cache/loupe/models"))
    + "/SmolLM2-135M-Instruct.Q4_1.gguf"

/// The tutorial's IOI prompts on one model, in this process: the next-token top 5 of the
/// clean prompt and the logit difference " John" - " Mary" of both prompts.
struct IOI: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the tutorial's IOI prompts and print logit differences.")

    @Option(help: "A GGUF file, an HF directory or an HF id in the local cache.")
    var model: String = defaultModel

    @Option(help: "The clean prompt.")
    var clean = "After John and Mary went to the store, Mary gave a bottle of milk to"

    @Option(help: "The corrupted prompt.")
    var corrupted = "After John and Mary went to the store, John gave a bottle of milk to"

    @Option(help: "The right answer (with its leading space).")
    var answer = " John"

    @Option(help: "The wrong answer.")
    var wrong = " Mary"

    @Option(help: "Run it on the daemon at this endpoint, which keeps the model warm between runs.")
    var endpoint: String?

    func run() throws {
        if let endpoint {
            return try IOIOnDaemon(endpoint: endpoint, model: model, clean: clean, corrupted: corrupted, answer: answer, wrong: wrong).run()
        }
        Parallel.configureBLAS()
        let loaded = try LoadedModel.load(model, registry: BuiltInPlugins.architectureRegistry())
        guard let tokenizer = loaded.tokenizer else { throw ValidationError("\(model) has no tokenizer") }
        print(String(format: "loaded %@ (%@, %d layers) in %.2f s", loaded.resolvedPath, loaded.model.architecture,
                     loaded.model.dimensions.layers, loaded.loadSeconds))
        let answerIDs = [answer, wrong].map { tokenizer.encodeWithoutSpecialTokens($0) }
        guard answerIDs.allSatisfy({ $0.count == 1 }) else { throw ValidationError("each answer must be one token, got \(answerIDs)") }
        let (right, other) = (answerIDs[0][0], answerIDs[1][0])

        let batch = TokenBatch([tokenizer.encode(clean), tokenizer.encode(corrupted)])
        let start = Date()
        let logits = try loaded.model.forward(batch, logits: .last)
        let seconds = Date().timeIntervalSince(start)
        let cleanLogits = logits.select(axis: 0, 0).select(axis: 0, 0).toArray()
        let top = cleanLogits.indices.sorted { cleanLogits[$0] > cleanLogits[$1] }.prefix(5)
        print("next token after the clean prompt:")
        for id in top { print(String(format: "  %8.3f  %6d  %@", cleanLogits[id], id, tokenizer.decode([id]).debugDescription)) }
        for (row, name) in ["clean", "corrupted"].enumerated() {
            let l = logits.select(axis: 0, row).select(axis: 0, 0)
            print(String(format: "%@ logit difference (%@ - %@): %.3f", name, answer.debugDescription, wrong.debugDescription, l[right] - l[other]))
        }
        print(String(format: "forward pass of both prompts: %.1f ms", seconds * 1000))
    }
}
