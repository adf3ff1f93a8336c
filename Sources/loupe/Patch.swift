import ArgumentParser
import Foundation
import LoupeWire

/// What `loupe patch` and `loupe heads` take.
struct PatchOptions: ParsableArguments {
    @Argument(help: "A loaded model's name (loupe load NAME SOURCE).") var name: String
    @Option(help: "The clean prompt (with --ids: token ids).") var clean: String
    @Option(help: "The corrupted prompt: the same number of tokens as the clean one (optional with --ablate zero or mean, where it is only the normalisation's baseline).") var corrupt: String?
    @Option(help: "The right answer, one token with its leading space: \" John\" (with --ids: a token id).") var answer: String
    @Option(help: "The wrong answer: \" Mary\".") var wrong: String
    @Flag(help: "--clean, --corrupt, --answer and --wrong are token ids (for models without a tokenizer).") var ids = false
    @Flag(help: "The raw logit difference instead of the normalized (edited - corrupted) / (clean - corrupted).") var raw = false
    @Option(help: "Ablate each unit of the clean run instead of patching: zero, mean (over the --reference prompts) or resample (from --corrupt).") var ablate: String?
    @Option(help: "For --ablate mean: a prompt to average over, as long as the clean one (repeat for more).") var reference: [String] = []
    @Option(help: "How the cells are computed: activation (each patched run, exactly) or attribution (every cell estimated from one clean forward pass and one corrupted forward and backward pass: an approximation).") var method = "activation"
    @Flag(help: "With --method attribution: also run the exact sweep, and show both, their correlation and the cell where they differ most.") var compare = false
    @Option(help: "For --site neurons: each neuron at the last position (last, the default) or at every position (sum).") var neuronPositions: String?

    func validate() throws {
        guard ["activation", "attribution"].contains(method) else {
            throw ValidationError("--method is activation or attribution, not '\(method)'")
        }
        if compare && method != "attribution" { throw ValidationError("--compare is for --method attribution") }
        if method == "attribution" && ablate != nil { throw ValidationError("--method attribution estimates patching; --ablate sweeps are exact only") }
        if let neuronPositions, !["last", "sum"].contains(neuronPositions) {
            throw ValidationError("--neuron-positions is last or sum, not '\(neuronPositions)'")
        }
        if let ablate, !["zero", "mean", "resample"].contains(ablate) {
            throw ValidationError("--ablate is zero, mean or resample, not '\(ablate)'")
        }
        if corrupt == nil && (ablate == nil || ablate == "resample") {
            throw ValidationError("--corrupt is needed to patch or to resample (only --ablate zero or mean can do without)")
        }
        if (ablate == "mean") != !reference.isEmpty {
            throw ValidationError(ablate == "mean" ? "--ablate mean needs --reference prompts to average over" : "--reference is for --ablate mean")
        }
    }
    @Option(help: "Write the heatmap as a self-contained SVG file.") var svg: String?
    @Option(help: "Write the heatmap as a self-contained HTML page (no script, nothing fetched).") var html: String?
    @Option(help: "Colours in the terminal: auto, always or never.") var color = "auto"
    @Option(help: "The heatmap's title.") var title: String?
}

struct Patch: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Patch the clean run into the corrupted one at every layer and position (or head, or MLP) and show the heatmap.",
        discussion: "Runs the tutorial's activation-patching sweep on the daemon; with --ablate, an ablation sweep of the clean run instead; with --method attribution, attribution patching's estimate of the patching sweep. With --json prints one object: clean_logit_diff, corrupted_logit_diff (null without --corrupt), rows, cols, values (rows = layers), seconds; with --method attribution also method, approximation, backward_peak_bytes and, with --compare, exact_values, correlation and worst.")
    @OptionGroup var client: ClientOptions
    @OptionGroup var patch: PatchOptions
    @Option(help: "What to patch: resid (the residual stream per layer and position), heads (each attention head at every position), head-positions (each head at each position), mlp (each MLP's output per position) or neurons (each MLP hidden unit).") var site = "resid"

    static let kinds = ["resid": "residual", "residual": "residual", "heads": "heads",
                        "head-positions": "head_positions", "head_positions": "head_positions", "mlp": "mlp", "neurons": "neurons"]

    func validate() throws {
        guard Self.kinds[site] != nil else { throw ValidationError("--site is resid, heads, head-positions, mlp or neurons, not '\(site)'") }
        if patch.neuronPositions != nil && site != "neurons" { throw ValidationError("--neuron-positions is for --site neurons") }
    }

    func run() throws { try PatchRun(client: client, options: patch, kind: Self.kinds[site]!).run() }
}

struct Heads: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Patch each attention head of the clean run into the corrupted one and show the heatmap (loupe patch --site heads).")
    @OptionGroup var client: ClientOptions
    @OptionGroup var patch: PatchOptions

    func validate() throws {
        if patch.neuronPositions != nil { throw ValidationError("--neuron-positions is for loupe patch --site neurons") }
    }

    func run() throws { try PatchRun(client: client, options: patch, kind: "heads").run() }
}

/// One sweep on the daemon, shown as `loupe patch` shows it.
struct PatchRun {
    let client: ClientOptions
    let options: PatchOptions
    let kind: String

    func run() throws {
        var standardError = FileHandle.standardError
        let fields = try request()
        let attribution = options.method == "attribution"
        let verb = attribution ? "estimating" : options.ablate == nil ? "patching" : "ablating"
        let unit = ["residual": "the residual stream", "mlp": "MLPs", "neurons": "neurons"][kind] ?? "heads"
        let progress = ProgressBar(enabled: isatty(STDERR_FILENO) != 0, label: "\(verb) \(unit)")
        let reply: MessageValue
        do {
            let connection = try client.connect()
            reply = try connection.call("sweep", fields) { interim in
                if interim["status"] == "progress", let done = interim["done"]?.intValue, let total = interim["total"]?.intValue {
                    progress.show(done, total)
                }
            }.body
            progress.finish()
        } catch {
            progress.finish()
            print("loupe: \(error)", to: &standardError)
            throw ExitCode.failure
        }

        func matrix(_ value: MessageValue?) -> [[Double]] {
            (value?.arrayValue ?? []).map { ($0.arrayValue ?? []).map { $0.doubleValue ?? .nan } }
        }
        let values = matrix(reply["values"])
        let rows = (reply["rows"]?.arrayValue ?? []).compactMap(\.stringValue)
        let cols = (reply["cols"]?.arrayValue ?? []).compactMap(\.stringValue)
        let clean = reply["clean"]?.doubleValue ?? .nan, corrupted = reply["corrupted"]?.doubleValue
        let seconds = reply["seconds"]?.doubleValue ?? 0
        let worst = reply["comparison"]?["worst"]
        if client.json {
            var object: [String: MessageValue] = [
                "clean_logit_diff": .double(clean), "corrupted_logit_diff": corrupted.map { .double($0) } ?? .null,
                "rows": MessageValue(rows), "cols": MessageValue(cols),
                "values": .array(values.map { .array($0.map { .double($0) }) }), "seconds": .double(seconds)]
            if attribution {
                object["method"] = "attribution"
                object["approximation"] = true
                object["backward_peak_bytes"] = reply["backward"]?["peak_bytes"] ?? .null
            }
            if options.compare {
                object["exact_values"] = .array(matrix(reply["exact"]?["values"]).map { .array($0.map { .double($0) }) })
                object["correlation"] = reply["comparison"]?["correlation"] ?? .null
                object["worst"] = worst ?? .null
            }
            print(MessageValue.map(object).jsonText(pretty: false))
        }

        let what = ["residual": "Residual Stream", "heads": "Attention Heads", "head_positions": "Attention Heads by Position",
                    "mlp": "MLP Outputs", "neurons": "MLP Neurons"][kind] ?? kind
        let how = attribution ? "Attribution patching" : options.ablate.map { "\($0.prefix(1).uppercased() + $0.dropFirst())-ablating" } ?? "Patching"
        func heatmap(_ values: [[Double]], exact: Bool) -> Heatmap {
            let estimate = attribution && !exact
            return Heatmap(
                title: options.title.map { exact ? "\($0) (exact)" : $0 }
                    ?? "\(exact ? "Patching" : how) \(options.name) \(what) on the IOI task\(estimate ? " (an approximation)" : "")",
                rowLabels: rows, columnLabels: cols, values: values,
                rowAxis: reply["row_axis"]?.stringValue ?? "Layer",
                columnAxis: reply["col_axis"]?.stringValue ?? (kind == "residual" || kind == "mlp" ? "Position" : "Head"),
                colorAxis: (estimate ? "Est. " : "") + (options.raw ? "Logit Diff" : "Norm. Logit Diff"))
        }
        let estimated = heatmap(values, exact: false)
        var summary = [String(format: "Clean logit difference: %.3f", clean)]
            + (corrupted.map { [String(format: "Corrupted logit difference: %.3f", $0)] } ?? [])
        if attribution {
            summary.append(String(format: "Attribution patching: every cell estimated to first order from one clean forward pass and one corrupted forward and backward pass (the backward held at most %.2f MB)",
                                  Double(reply["backward"]?["peak_bytes"]?.intValue ?? 0) / 1e6))
        }
        if options.compare, let worst {
            let row = worst["row"]?.intValue ?? 0, column = worst["col"]?.intValue ?? 0
            summary.append(String(format: "Against the exact sweep: correlation %.3f; the largest difference at layer %@, %@: estimate %.3f, exact %.3f",
                                  reply["comparison"]?["correlation"]?.doubleValue ?? .nan, row < rows.count ? rows[row] : "?",
                                  column < cols.count ? cols[column] : "?", worst["attribution"]?.doubleValue ?? .nan, worst["exact"]?.doubleValue ?? .nan))
        }
        let units = ["residual": "positions", "mlp": "positions", "heads": "heads", "neurons": "neurons"][kind] ?? "head-positions"
        let work = attribution
            ? String(format: "%d layers x %d %@ in %.2f s (two forward passes and a backward; the batched trace of the exact sweep computes %@ token-layers)",
                     rows.count, cols.count, units, seconds, grouped(reply["plain_token_layers"]?.intValue ?? 0))
            : String(format: "%d layers x %d %@ in %.2f s (%@ token-layers computed; the batched trace computes %@)",
                     rows.count, cols.count, units, seconds,
                     grouped(reply["token_layers"]?.intValue ?? 0), grouped(reply["plain_token_layers"]?.intValue ?? 0))
        if !client.json {
            let colors = TerminalColors.detect(forced: options.color), width = terminalWidth()
            summary.forEach { print($0) }
            print("")
            // A neuron per column is too wide for a terminal: the largest cells instead.
            print(kind == "neurons" ? estimated.largest(20) : estimated.terminal(colors: colors, width: width))
            if options.compare {
                let exact = heatmap(matrix(reply["exact"]?["values"]), exact: true)
                print("")
                print(kind == "neurons" ? exact.largest(20) : exact.terminal(colors: colors, width: width))
            }
            print("")
            print(work)
        }
        do {
            if let svg = options.svg {
                try write(estimated.svg(), to: svg)
                if !client.json { print("wrote \(svg)") }
            }
            if let html = options.html {
                try write(estimated.html(summary: summary + [work]), to: html)
                if !client.json { print("wrote \(html)") }
            }
        } catch {
            print("loupe: \(error.localizedDescription)", to: &standardError)
            throw ExitCode.failure
        }
    }

    /// The sweep request's fields.
    private func request() throws -> [String: MessageValue] {
        func tokens(_ text: String, _ option: String) throws -> MessageValue {
            guard options.ids else { return .string(text) }
            let numbers = text.split(whereSeparator: { $0 == "," || $0 == " " }).compactMap { Int($0) }
            guard !numbers.isEmpty else { throw ValidationError("--ids needs token ids in \(option), such as '3260, 1757'") }
            return MessageValue(numbers)
        }
        func answer(_ text: String, _ option: String) throws -> MessageValue {
            guard options.ids else { return .string(text) }
            guard let id = Int(text.trimmingCharacters(in: .whitespaces)) else { throw ValidationError("--ids needs a token id for \(option)") }
            return MessageValue(id)
        }
        var fields: [String: MessageValue] = [
            "model": .string(options.name), "clean": try tokens(options.clean, "--clean"), "kind": .string(kind),
            "metric": ["logit_diff": ["answer": try answer(options.answer, "--answer"), "wrong": try answer(options.wrong, "--wrong")]],
            "normalized": .bool(!options.raw), "protocol": MessageValue(WireProtocol.version)]
        if options.method != "activation" { fields["method"] = .string(options.method) }
        if options.compare { fields["compare"] = true }
        if let positions = options.neuronPositions { fields["neuron_positions"] = .string(positions) }
        if let corrupt = options.corrupt { fields["corrupted"] = try tokens(corrupt, "--corrupt") }
        if let ablate = options.ablate {
            fields["intervention"] = "ablate"
            var params: [String: MessageValue] = ["mode": .string(ablate)]
            if !options.reference.isEmpty { params["reference"] = .array(try options.reference.map { try tokens($0, "--reference") }) }
            fields["params"] = .map(params)
        }
        return fields
    }

    private func write(_ text: String, to path: String) throws {
        let url = URL(fileURLWithPath: path)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try text.write(to: url, atomically: true, encoding: .utf8)
    }
}

/// 12345 as "12,345".
func grouped(_ number: Int) -> String {
    let digits = Array(String(number))
    var out = ""
    for (index, digit) in digits.enumerated() {
        if index > 0 && (digits.count - index) % 3 == 0 { out += "," }
        out.append(digit)
    }
    return out
}

/// The terminal's width in columns: the window's size, else $COLUMNS, else 100.
func terminalWidth() -> Int {
    var size = winsize()
    if ioctl(STDOUT_FILENO, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 0 { return Int(size.ws_col) }
    return ProcessInfo.processInfo.environment["COLUMNS"].flatMap(Int.init) ?? 100
}

/// A one-line progress bar on stderr, redrawn in place; silent when stderr is not a terminal.
final class ProgressBar {
    let enabled: Bool
    let label: String
    private var drawn = false
    private let start = Date()

    init(enabled: Bool, label: String) {
        self.enabled = enabled
        self.label = label
    }

    func show(_ done: Int, _ total: Int) {
        guard enabled, total > 0 else { return }
        let width = 30
        let filled = min(width, done * width / total)
        let line = String(format: "\r%@ |%@%@| %d/%d layers %.1fs", label, String(repeating: "█", count: filled),
                          String(repeating: " ", count: width - filled), done, total, Date().timeIntervalSince(start))
        FileHandle.standardError.write(line)
        drawn = true
    }

    func finish() {
        guard drawn else { return }
        FileHandle.standardError.write("\r\u{1B}[K")
        drawn = false
    }
}
