import ArgumentParser
import Foundation
import BuiltInPlugins
import LoupeModels
import LoupeSweeps
import LoupeTensor
import LoupeTrace

/// Benchmarks of the engine. Every figure is printed with the baseline it is divided by,
/// measured in the same run: the forward pass against sgemm alone on the same matrix
/// shapes, and against HF transformers on the same weights where torch is installed.
@main
struct EngineBenchmark: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "loupe-bench", abstract: "Benchmarks of Loupe's engine.")

    @Option(help: "The model: a GGUF file or an HF directory (scripts/make_random_gpt2.py writes a GPT-2-small-shaped one).")
    var model: String

    @Option(help: "A name for the report.")
    var name: String?

    @Option(help: "Batch sizes to time, each of 16-token sequences.")
    var rows: [Int] = [1, 64]

    @Option(help: "Timed repetitions per figure (the median is reported).")
    var repeats = 7

    @Option(help: "Python interpreter for the HF transformers and nnsight references.")
    var python = "python3"

    @Flag(help: "Also time the tutorial's patching sweeps (the IOI pair) against the plain batched pass, and attribution patching against a forward pass and the exact sweeps.")
    var sweeps = false

    @Option(help: "The sweep kinds to time with --sweeps, comma-separated (default: all).")
    var sweepKinds: String?

    @Flag(help: "Also time the gradient of the IOI logit difference at every layer's output against the forward pass.")
    var gradients = false

    @Flag(help: "Also time greedy generation (batch 1, 32 new tokens) and measure the key/value cache.")
    var generate = false

    func run() throws {
        Parallel.configureBLAS()
        let registry = BuiltInPlugins.architectureRegistry()
        print("\n## \(name ?? model)")
        print("\(Parallel.cores) cores; \(Date()); median of \(repeats) runs after one warm-up")
        let before = residentBytes()
        let loadStart = Date()
        let loaded = try LoadedModel.load(model, registry: registry)
        let loadSeconds = Date().timeIntervalSince(loadStart)
        let network = loaded.model
        // Mapped float32 weights become resident when first read: measure after a pass.
        _ = try network.forward(TokenBatch([[1]]), logits: .last)
        let resident = residentBytes() - before
        print(String(format: "load: %.3f s; resident after one pass +%.0f MB for %.0f MB of float32 weights (%.2fx)",
                     loadSeconds, Double(resident) / 1e6, Double(network.weightBytes) / 1e6,
                     Double(resident) / Double(network.weightBytes)))
        // A gated MLP (gate and up projections) everywhere but GPT-2 and GPT-NeoX.
        let gated = !["gpt2", "gpt_neox"].contains(network.architecture)
        for rows in rows {
            let tokens = (0..<16).map { ($0 * 37 + rows) % 1000 }
            let batch = TokenBatch(Array(repeating: tokens, count: rows))
            let forward = median(repeats) { _ = try! network.forward(batch, logits: .all) }
            let flops = forwardFLOPs(network.dimensions, gated: gated, tokens: rows * 16, length: 16)
            let linearFLOPs = forwardFLOPs(network.dimensions, gated: gated, tokens: rows * 16, length: 0)
            let sgemm = sgemmOnSameShapes(network.dimensions, gated: gated, rows: rows * 16)
            var line = String(format: "forward %dx16: %.1f ms, %.1f GFLOP/s = %.2f of sgemm's %.1f GFLOP/s on the same shapes",
                              rows, forward * 1000, flops / forward / 1e9,
                              (flops / forward) / (linearFLOPs / sgemm), linearFLOPs / sgemm / 1e9)
            if let torch = torchSeconds(model, rows: rows) {
                line += String(format: "; HF transformers %.1f ms: Loupe takes %.2fx torch's time", torch * 1000, forward / torch)
            } else {
                line += "; HF transformers: torch not installed"
            }
            print(line)
        }
        // Hooks that want no site: the cost of the hook points themselves.
        let batch = TokenBatch([Array(0..<16)])
        let bare = median(repeats) { _ = try! network.forward(batch, logits: .all) }
        let hooked = median(repeats) { _ = try! network.forward(batch, hooks: NoSites(), logits: .all) }
        print(String(format: "forward 1x16 with hooks that want no site: %.1f ms against %.1f ms without hooks (%.3fx)",
                     hooked * 1000, bare * 1000, hooked / bare))
        if sweeps { try benchmarkSweeps(loaded) }
        if gradients { try benchmarkGradients(loaded) }
        if generate { try benchmarkGeneration(network) }
    }

    /// Greedy decoding of 32 tokens after an 8-token prompt: the decode steps' tokens per
    /// second (the prompt's step apart), and the cache's bytes when it holds 512 tokens.
    func benchmarkGeneration(_ model: any LanguageModel) throws {
        let prompt = Array(100..<108), new = 32
        var prefill = [Double](), decode = [Double]()
        for _ in 0..<(repeats + 1) {
            let generation = try Generation(model: model, prompts: [prompt], settings: GenerationSettings(maxNewTokens: new))
            var start = Date()
            _ = try generation.next()
            prefill.append(Date().timeIntervalSince(start))
            start = Date()
            _ = try generation.run()
            decode.append(Date().timeIntervalSince(start))
        }
        func median(_ xs: [Double]) -> Double { Array(xs.dropFirst()).sorted()[repeats / 2] }
        let steps = Double(new - 1)
        print(String(format: "generate 1x%d greedy after %d prompt tokens: prompt step %.1f ms, decode %.1f ms/token = %.1f tokens/s",
                     new, prompt.count, median(prefill) * 1000, median(decode) / steps * 1000, steps / median(decode)))
        // A prompt of 500 and 13 new tokens: room for 512 slots (the last token is never run).
        let long = try Generation(model: model, prompts: [(0..<500).map { 100 + $0 % 1000 }], settings: GenerationSettings(maxNewTokens: 13))
        _ = try long.next()
        let d = model.dimensions
        print(String(format: "key/value cache at %d slots: %d bytes (%.1f MB; %d layers x keys and values x %d key/value heads x %d dims x float32)",
                     long.cache.capacity, long.cache.bytes, Double(long.cache.bytes) / 1e6, d.layers, d.keyValueHeads, d.headDim))
    }

    /// One forward and backward of the corrupted IOI prompt, keeping every layer output's
    /// gradient of the logit difference (nnsight's gradient trace), against the forward alone.
    func benchmarkGradients(_ loaded: LoadedModel) throws {
        let (_, corrupted, answer, wrong) = try ioiTokens(loaded)
        let model = loaded.model, batch = TokenBatch([corrupted])
        let sites = (0..<model.dimensions.layers).map { CanonicalSite.residPost($0).site }
        let forward = median(repeats) { _ = try! model.forward(batch, logits: .last) }
        var result: BackwardResult?
        let backward = median(repeats) {
            result = try! model.backward(batch, hooks: GradientRecorder(sites, keepValues: false), logits: .last) { logits in
                let last = logits.select(axis: 0, 0).select(axis: 0, 0)
                return TensorMath.binary(last.select(axis: 0, answer), last.select(axis: 0, wrong), .sub)
            }
        }
        print(String(format: "gradient of the logit difference at every layer output, 1x%d: %.1f ms; forward alone %.1f ms (%.2fx); backward peak %.1f MB, copies kept %.1f MB",
                     corrupted.count, backward * 1000, forward * 1000, backward / forward,
                     Double(result!.peakBytes) / 1e6, Double(result!.savedBytes) / 1e6))
    }

    /// The tutorial's residual and head sweeps on the IOI pair: exact reuse against the plain
    /// batched pass (the tutorial's batched cells) in the same run, and nnsight where installed.
    func benchmarkSweeps(_ loaded: LoadedModel) throws {
        let (clean, corrupted, answer, wrong) = try ioiTokens(loaded)
        let sweep = PatchingSweep(model: loaded.model, interventions: BuiltInPlugins.interventionRegistry())
        let nnsight = nnsightSeconds()
        let kinds = try sweepKinds.map { names in
            try names.split(separator: ",").map { name in
                guard let kind = SweepKind(rawValue: String(name)) else { throw ValidationError("no sweep kind \(name)") }
                return kind
            }
        } ?? SweepKind.allCases.filter { $0 != .neurons }  // neurons: the plain path itself, too large for a real model
        var exact = [SweepKind: (seconds: Double, result: SweepResult)]()
        for kind in kinds {
            let request = SweepRequest(clean: clean, corrupted: corrupted, kind: kind, metric: .logitDifference(answer: answer, wrong: wrong))
            var result: SweepResult?
            let seconds = median(repeats) { result = try! sweep.run(request) }
            exact[kind] = (seconds, result!)
            let plain = try sweep.runPlain(request)
            let worst = zip(result!.values.joined(), plain.values.joined()).map { abs($0 - $1) }.max() ?? 0
            var line = String(format: "%@ sweep %dx%d: %.3f s; plain batched pass %.2f s (%.1fx); token-layers %d vs %d (%.1fx fewer); max |difference| %.1e",
                              kind.rawValue, result!.values.count, result!.values[0].count, seconds, plain.seconds, plain.seconds / seconds,
                              result!.tokenLayers, result!.plainTokenLayers, Double(result!.plainTokenLayers) / Double(result!.tokenLayers), worst)
            // nnsight times the tutorial's two cells; the other kinds have no tutorial cell.
            if let cell = [SweepKind.residual: "residual_s", .heads: "heads_s"][kind] {
                if let reference = nnsight?[cell] {
                    line += String(format: "; nnsight %.2f s (%.1fx)", reference, reference / seconds)
                } else {
                    line += "; nnsight: not installed"
                }
            }
            print(line)
        }
        try benchmarkBatchedCellTrace(loaded.model, clean: clean, corrupted: corrupted, answer: answer, wrong: wrong,
                                      nnsight: nnsight?["residual_s"])
        try benchmarkAttribution(loaded.model, SweepRequest(clean: clean, corrupted: corrupted, kind: .residual,
                                                            metric: .logitDifference(answer: answer, wrong: wrong)),
                                 exact: exact, nnsight: nnsight)
    }

    /// Attribution patching of the residual stream, heads and MLPs together on the IOI pair
    /// (one clean forward pass, one corrupted forward and backward), against one forward pass
    /// of the pair, Loupe's exact sweeps and nnsight's batched cells and attribution patching;
    /// its correlation with the exact matrices and the backward's memory.
    func benchmarkAttribution(_ network: any LanguageModel, _ request: SweepRequest, exact: [SweepKind: (seconds: Double, result: SweepResult)],
                              nnsight: [String: Double]?) throws {
        let kinds: [SweepKind] = [.residual, .heads, .mlp]
        var result: AttributionResult?
        let seconds = median(repeats) { result = try! AttributionSweep(model: network).run(request, kinds: kinds) }
        // The pair as one batch, logits at the last position only, as the sweep reads them.
        let pair = TokenBatch([request.clean, request.corrupted!])
        let forward = median(repeats) { _ = try! network.forward(pair, logits: .last) }
        print(String(format: "attribution sweep of residual + heads + mlp (%d cells): %.1f ms; one forward pass of the pair (2x%d, last logits) %.1f ms: %.2fx (target at most 3x)",
                     result!.results.map { $0.values.count * $0.values[0].count }.reduce(0, +), seconds * 1000, request.clean.count,
                     forward * 1000, seconds / forward))
        var against = [String]()
        if let residual = exact[.residual], let heads = exact[.heads] {
            against.append(String(format: "Loupe's exact residual and head sweeps %.3f s (%.1fx)", residual.seconds + heads.seconds,
                                  (residual.seconds + heads.seconds) / seconds))
        }
        if let residual = nnsight?["residual_s"], let heads = nnsight?["heads_s"] {
            against.append(String(format: "nnsight's batched residual and head cells %.2f s (%.0fx)", residual + heads, (residual + heads) / seconds))
        } else {
            against.append("nnsight's cells: not installed")
        }
        // nnsight's attribution patching of the residual stream (scripts/bench_gradients_nnsight.py, SmolLM2 only).
        if model.hasSuffix("SmolLM2-135M-Instruct.Q4_1.gguf"),
           let reference = runJSONScript("bench_gradients_nnsight.py", ["--gguf", model, "--repeats", "\(repeats)"]),
           let attribution = reference["nnsight_attribution_s"] as? Double {
            against.append(String(format: "nnsight's attribution patching of the residual stream alone %.3f s (%.1fx)", attribution, attribution / seconds))
        }
        print("  against " + against.joined(separator: "; "))
        // The exact matrices of kinds not timed above, for the correlations.
        var correlations = [String]()
        for (kind, estimate) in zip(kinds, result!.results) {
            let matrix = try exact[kind]?.result ?? PatchingSweep(model: network, interventions: BuiltInPlugins.interventionRegistry()).run(request.with(kind: kind))
            let comparison = SweepComparison(attribution: estimate.values, exact: matrix.values)
            correlations.append(String(format: "%@ %.3f (largest difference %.2f)", kind.rawValue, comparison.correlation ?? .nan,
                                       abs(comparison.worst.difference)))
        }
        print("  correlation with the exact matrices (normalized): " + correlations.joined(separator: ", "))
        print(String(format: "  backward: %.1f MB kept from the forward pass, %.1f MB at most with the gradients (the bound a limit checks: %.1f MB)",
                     Double(result!.savedBytes) / 1e6, Double(result!.peakBytes) / 1e6, Double(result!.boundBytes) / 1e6))
    }

    /// The tutorial's batched residual cell (clean, corrupted, one invocation per layer and
    /// position) sent as a general trace, against the sweep engine's matrix and nnsight's time.
    func benchmarkBatchedCellTrace(_ model: any LanguageModel, clean: [Int], corrupted: [Int], answer: Int, wrong: Int,
                                   nnsight: Double?) throws {
        var nodes: [TraceValue] = []
        func add(_ op: String, _ fields: [String: TraceValue]) -> TraceValue {
            nodes.append(.map(fields.merging(["id": .int(nodes.count), "op": .string(op)]) { $1 }))
            return .ref(nodes.count - 1)
        }
        let all: TraceValue = ["slice": [nil, nil, nil]]
        func logitDifference(_ invoke: Int) -> TraceValue {
            let logits = add("get", ["site": "lm_head", "io": "output", "invoke": .int(invoke)])
            return add("sub", ["x": add("index", ["x": logits, "key": [0, -1, .int(answer)]]),
                               "y": add("index", ["x": logits, "key": [0, -1, .int(wrong)]])])
        }
        let layers = model.dimensions.layers
        // Each block's output hidden state, by its canonical name: the same in every architecture.
        let block = { (layer: Int) in CanonicalSite.residPost(layer).path }
        let cleanHidden = (0..<layers).map { add("get", ["site": .string(block($0)), "io": "output", "invoke": 0]) }
        let cleanValue = logitDifference(0), corruptedValue = logitDifference(1)
        var invocations = [clean, corrupted]
        for layer in 0..<layers {
            for position in 0..<clean.count {
                let invoke = invocations.count
                invocations.append(corrupted)
                let hidden = add("get", ["site": .string(block(layer)), "io": "output", "invoke": .int(invoke)])
                _ = add("setindex", ["x": hidden, "key": [all, .int(position), all],
                                     "value": add("index", ["x": cleanHidden[layer], "key": [all, .int(position), all]])])
                let normalized = add("div", ["x": add("sub", ["x": logitDifference(invoke), "y": corruptedValue]),
                                             "y": add("sub", ["x": cleanValue, "y": corruptedValue])])
                _ = add("save", ["x": normalized, "name": .string("\(layer),\(position)")])
            }
        }
        let runner = try TraceRunner(model: model)
        let compiled = try runner.compile(Trace(invocations: invocations, nodes: nodes))
        var result: TraceResult?
        let seconds = median(max(1, repeats / 3)) { result = try! runner.run(compiled) }
        let sweep = try PatchingSweep(model: model, interventions: BuiltInPlugins.interventionRegistry()).run(SweepRequest(clean: clean, corrupted: corrupted, kind: .residual,
                                                                     metric: .logitDifference(answer: answer, wrong: wrong)))
        var worst: Float = 0
        for layer in 0..<layers {
            for position in 0..<clean.count {
                worst = max(worst, abs((result!.saved["\(layer),\(position)"]?.toArray().first ?? .nan) - sweep.values[layer][position]))
            }
        }
        var line = String(format: "the batched residual cell as a trace (%d invocations): %.2f s, %d token-layers; max |trace - sweep| %.1e",
                          invocations.count, seconds, result!.tokenLayers, worst)
        if let nnsight { line += String(format: "; nnsight %.2f s (%.1fx)", nnsight, nnsight / seconds) }
        print(line)
    }

    /// The seed's IOI pair in the model's tokenizer, or GPT-2's ids for a model without one.
    func ioiTokens(_ loaded: LoadedModel) throws -> ([Int], [Int], Int, Int) {
        guard let tokenizer = loaded.tokenizer else {
            let clean = [3260, 1757, 290, 5335, 1816, 284, 262, 3650, 11, 5335, 2921, 257, 9294, 286, 7545, 284]
            var corrupted = clean
            corrupted[9] = 1757
            return (clean, corrupted, 1757, 5335)
        }
        return (tokenizer.encode("After John and Mary went to the store, Mary gave a bottle of milk to"),
                tokenizer.encode("After John and Mary went to the store, John gave a bottle of milk to"),
                tokenizer.encodeWithoutSpecialTokens(" John")[0], tokenizer.encodeWithoutSpecialTokens(" Mary")[0])
    }

    /// nnsight's times for the tutorial's batched cells on SmolLM2 or Gemma 3 (on the same IOI
    /// pair, in the same run), or nil where it is not installed.
    func nnsightSeconds() -> [String: Double]? {
        let known = ["SmolLM2-135M-Instruct.Q4_1.gguf": "smollm2", "gemma-3-270m-q4_k_m.gguf": "gemma3"]
        guard let reference = known.first(where: { model.hasSuffix($0.key) })?.value else { return nil }
        return runJSONScript("nnsight_reference.py", ["--time", "--model", reference, "--gguf", model, "--hf-cache"])?
            .compactMapValues { $0 as? Double }
    }

    /// The matrix products of one forward pass as the engine makes them: (inputs, outputs,
    /// how many, weight stored output-major). Projections are input-major (Llama's gate and up
    /// fused into one); the tied unembedding reads the embedding matrix output-major.
    func linearShapes(_ d: ModelDimensions, gated: Bool) -> [(inputs: Int, outputs: Int, count: Int, outputMajor: Bool)] {
        let attentionWidth = d.heads * d.headDim, kvWidth = d.keyValueHeads * d.headDim
        return [(d.hidden, attentionWidth + 2 * kvWidth, d.layers, false), (attentionWidth, d.hidden, d.layers, false),
                (d.hidden, d.intermediate * (gated ? 2 : 1), d.layers, false), (d.intermediate, d.hidden, d.layers, false),
                (d.hidden, d.vocabulary, 1, true)]
    }

    /// 2 × the multiply-adds of a forward pass with full logits over `tokens` tokens in
    /// sequences of `length` (0 leaves attention out: the sgemm-only part).
    func forwardFLOPs(_ d: ModelDimensions, gated: Bool, tokens: Int, length: Int) -> Double {
        let perToken = linearShapes(d, gated: gated).reduce(0.0) { $0 + Double($1.inputs * $1.outputs * $1.count) }
        // q·kᵀ and pattern·v, counted over the full square as torch computes them.
        let attention = 2.0 * 2 * Double(tokens * length * d.heads * d.headDim * d.layers)
        return 2 * Double(tokens) * perToken + attention
    }

    /// Median time of the same sgemm calls the forward pass makes, and nothing else
    /// (operands allocated outside the timing).
    func sgemmOnSameShapes(_ d: ModelDimensions, gated: Bool, rows: Int) -> Double {
        let operands = linearShapes(d, gated: gated).map { shape in
            (shape, Tensor(shape: [rows, shape.inputs], values: (0..<(rows * shape.inputs)).map { Float($0 % 7) * 0.01 }),
             // Written weights: untouched zero pages would all be one cached page.
             Tensor(shape: [shape.outputs * shape.inputs], values: (0..<(shape.outputs * shape.inputs)).map { Float($0 % 13) * 0.01 }),
             Tensor(zeros: [rows, shape.outputs]))
        }
        return median(repeats) {
            for (shape, x, w, y) in operands {
                for _ in 0..<shape.count {
                    gemm(rows: rows, columns: shape.outputs, inner: shape.inputs, a: x.data, lda: shape.inputs, transposeA: false,
                         b: w.data, ldb: shape.outputMajor ? shape.inputs : shape.outputs, transposeB: shape.outputMajor,
                         c: y.data, ldc: shape.outputs)
                }
            }
        }
    }

    /// HF transformers' median forward time on the same weights, or nil without torch. A GGUF
    /// is read from the float32 HF directory reference_forward.py keeps of it (dequantizing
    /// Gemma 3 takes transformers about 50 s; the forward pass timed is the same).
    func torchSeconds(_ source: String, rows: Int) -> Double? {
        runJSONScript("reference_forward.py", ["--time", source, "--batch", "\(rows)", "--seq", "16", "--repeats", "\(repeats)", "--hf-cache"])?["median_s"] as? Double
    }

    /// The last line of a reference script's output as JSON, or nil when it fails (exit code 3
    /// means its Python packages are not installed).
    func runJSONScript(_ name: String, _ arguments: [String]) -> [String: Any]? {
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("scripts/" + name).path
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [python, script] + arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return nil }
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0, let line = String(data: data, encoding: .utf8)?.split(separator: "\n").last else { return nil }
        return try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
    }
}

/// A hook set that asks for nothing.
final class NoSites: ForwardHooks {
    func wants(_ site: Site) -> Bool { false }
    func visit(_ site: Site, _ value: inout Tensor) throws {}
}

/// Median wall time of `repeats` runs after one warm-up.
func median(_ repeats: Int, _ body: () -> Void) -> Double {
    body()
    var times = [Double]()
    for _ in 0..<repeats {
        let start = DispatchTime.now().uptimeNanoseconds
        body()
        times.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
    }
    return times.sorted()[times.count / 2]
}

/// This process's resident set, from /proc.
func residentBytes() -> Int {
    guard let statm = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
    let fields = statm.split(separator: " ")
    return fields.count > 1 ? (Int(fields[1]) ?? 0) * Int(sysconf(Int32(_SC_PAGESIZE))) : 0
}
