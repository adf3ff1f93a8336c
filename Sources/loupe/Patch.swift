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

    func validate() throws {
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
        discussion: "Runs the tutorial's activation-patching sweep on the daemon; with --ablate, an ablation sweep of the clean run instead. With --json prints one object: clean_logit_diff, corrupted_logit_diff (null without --corrupt), rows, cols, values (rows = layers), seconds.")
    @OptionGroup var client: ClientOptions
    @OptionGroup var patch: PatchOptions
    @Option(help: "What to patch: resid (the residual stream per layer and position), heads (each attention head at every position), head-positions (each head at each position) or mlp (each MLP's output per position).") var site = "resid"

    static let kinds = ["resid": "residual", "residual": "residual", "heads": "heads",
                        "head-positions": "head_positions", "head_positions": "head_positions", "mlp": "mlp"]

    func validate() throws {
        guard Self.kinds[site] != nil else { throw ValidationError("--site is resid, heads, head-positions or mlp, not '\(site)'") }
    }

    func run() throws { try PatchRun(client: client, options: patch, kind: Self.kinds[site]!).run() }
}

struct Heads: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Patch each attention head of the clean run into the corrupted one and show the heatmap (loupe patch --site heads).")
    @OptionGroup var client: ClientOptions
    @OptionGroup var patch: PatchOptions

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
        let verb = options.ablate == nil ? "patching" : "ablating"
        let unit = ["residual": "the residual stream", "mlp": "MLPs"][kind] ?? "heads"
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

        let values = (reply["values"]?.arrayValue ?? []).map { ($0.arrayValue ?? []).map { $0.doubleValue ?? .nan } }
        let rows = (reply["rows"]?.arrayValue ?? []).compactMap(\.stringValue)
        let cols = (reply["cols"]?.arrayValue ?? []).compactMap(\.stringValue)
        let clean = reply["clean"]?.doubleValue ?? .nan, corrupted = reply["corrupted"]?.doubleValue
        let seconds = reply["seconds"]?.doubleValue ?? 0
        if client.json {
            let object: MessageValue = ["clean_logit_diff": .double(clean), "corrupted_logit_diff": corrupted.map { .double($0) } ?? .null,
                                        "rows": MessageValue(rows), "cols": MessageValue(cols),
                                        "values": .array(values.map { .array($0.map { .double($0) }) }), "seconds": .double(seconds)]
            print(object.jsonText(pretty: false))
        }

        let what = ["residual": "Residual Stream", "heads": "Attention Heads", "head_positions": "Attention Heads by Position",
                    "mlp": "MLP Outputs"][kind] ?? kind
        let how = options.ablate.map { "\($0.prefix(1).uppercased() + $0.dropFirst())-ablating" } ?? "Patching"
        let heatmap = Heatmap(
            title: options.title ?? "\(how) \(options.name) \(what) on the IOI task",
            rowLabels: rows, columnLabels: cols, values: values,
            rowAxis: reply["row_axis"]?.stringValue ?? "Layer",
            columnAxis: reply["col_axis"]?.stringValue ?? (kind == "residual" || kind == "mlp" ? "Position" : "Head"),
            colorAxis: options.raw ? "Logit Diff" : "Norm. Logit Diff")
        let summary = [String(format: "Clean logit difference: %.3f", clean)]
            + (corrupted.map { [String(format: "Corrupted logit difference: %.3f", $0)] } ?? [])
        let work = String(format: "%d layers x %d %@ in %.2f s (%@ token-layers computed; the batched trace computes %@)",
                          rows.count, cols.count, ["residual": "positions", "mlp": "positions", "heads": "heads"][kind] ?? "head-positions", seconds,
                          grouped(reply["token_layers"]?.intValue ?? 0), grouped(reply["plain_token_layers"]?.intValue ?? 0))
        if !client.json {
            summary.forEach { print($0) }
            print("")
            print(heatmap.terminal(colors: TerminalColors.detect(forced: options.color), width: terminalWidth()))
            print("")
            print(work)
        }
        do {
            if let svg = options.svg {
                try write(heatmap.svg(), to: svg)
                if !client.json { print("wrote \(svg)") }
            }
            if let html = options.html {
                try write(heatmap.html(summary: summary + [work]), to: html)
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
