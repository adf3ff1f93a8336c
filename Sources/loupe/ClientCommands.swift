import ArgumentParser
import Foundation
import LoupeWire

/// What every client command takes.
struct ClientOptions: ParsableArguments {
    @Option(help: "The daemon's endpoint (default: $LOUPE_ENDPOINT or \(WireProtocol.defaultEndpoint)).")
    var endpoint = ProcessInfo.processInfo.environment["LOUPE_ENDPOINT"] ?? WireProtocol.defaultEndpoint

    @Flag(help: "Print the reply as JSON.")
    var json = false

    @Option(help: "Seconds to wait for the daemon's first reply.")
    var timeout: Double = 5

    @Option(help: ArgumentHelp("A daemon with CURVE: its public key, or a file holding it (default: $LOUPE_CURVE_SERVER_KEY).", valueName: "KEY|FILE"))
    var curveServerKey: String?

    @Option(help: ArgumentHelp("A daemon with CURVE: this client's secret key file, from loupe keygen (default: $LOUPE_CURVE_CLIENT_KEY).", valueName: "FILE"))
    var curveClientKey: String?

    /// A connection to the daemon, with CURVE keys when given.
    func connect() throws -> WireClient {
        let curve: CurveClientKeys?
        let environment = ProcessInfo.processInfo.environment
        do {
            curve = try CurveClientKeys.load(serverKey: curveServerKey ?? environment["LOUPE_CURVE_SERVER_KEY"],
                                             clientKeyFile: curveClientKey ?? environment["LOUPE_CURVE_CLIENT_KEY"])
        } catch {
            throw ValidationError("\(error)")
        }
        return try WireClient(endpoint: endpoint, timeout: timeout, curve: curve)
    }

    /// Sends one request and returns the reply's body; a failure prints the daemon's
    /// message (or that no daemon answered) and exits non-zero. `interim` sees a job's
    /// `queued`, `running` and `progress` replies; `finished` runs once the final reply or
    /// the failure is in, before anything is printed (it clears a progress line).
    func call(_ op: String, _ fields: [String: MessageValue] = [:],
              interim: ((MessageValue) -> Void)? = nil, finished: () -> Void = {}) throws -> MessageValue {
        do {
            defer { finished() }
            let client = try connect()
            var fields = fields
            fields["protocol"] = MessageValue(WireProtocol.version)
            return try client.call(op, fields, interim: interim).body
        } catch {
            var standardError = FileHandle.standardError
            print("loupe: \(error)", to: &standardError)
            throw ExitCode.failure
        }
    }

    /// The reply as JSON, without the envelope fields.
    func printJSON(_ reply: MessageValue) {
        var fields = reply.mapValue ?? [:]
        fields["id"] = nil
        fields["status"] = nil
        print(MessageValue.map(fields).jsonText(pretty: true))
    }
}

extension FileHandle: @retroactive TextOutputStream {
    public func write(_ string: String) { write(Data(string.utf8)) }
}

struct Ps: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the models the daemon has loaded.")
    @OptionGroup var options: ClientOptions

    func run() throws {
        let reply = try options.call("models.list")
        if options.json { return options.printJSON(reply) }
        let models = reply["models"]?.arrayValue ?? []
        guard !models.isEmpty else { return print("no models loaded") }
        let rows = models.map { model -> [String] in
            let bytes = Double(model["weight_bytes"]?.intValue ?? 0)
            let state = model["running"]?.boolValue == true ? "running" : "idle \(Int(model["idle_seconds"]?.doubleValue ?? 0)) s"
            let queued = model["queued"]?.intValue ?? 0
            return [model["name"]?.stringValue ?? "", model["architecture"]?.stringValue ?? "",
                    String(format: "%.0f MB", bytes / 1e6), state + (queued > 0 ? ", \(queued) queued" : ""),
                    model["path"]?.stringValue ?? ""]
        }
        printTable(["NAME", "ARCH", "MEMORY", "STATE", "PATH"], rows)
    }
}

struct Load: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Load a model into the daemon under a name.")
    @OptionGroup var options: ClientOptions
    @Argument(help: "The name to use for it.") var name: String
    @Argument(help: "A GGUF file, an HF directory, an HF id in the local cache, or a file in the models directory.") var source: String

    func run() throws {
        let source = FileManager.default.fileExists(atPath: source)
            ? URL(fileURLWithPath: source).standardizedFileURL.path : source
        let progress = LoadProgress(label: "loading \(name)")
        let reply = try options.call("models.load", ["name": .string(name), "source": .string(source)],
                                     interim: progress.update, finished: progress.finish)
        if options.json { return options.printJSON(reply) }
        let layers = reply["dimensions"]?["layers"]?.intValue ?? 0
        let how = reply["shared"]?.boolValue == true ? "already in memory"
            : String(format: "in %.2f s", reply["load_seconds"]?.doubleValue ?? 0)
        print("loaded \(name) (\(reply["architecture"]?.stringValue ?? "?"), \(layers) layers) from \(reply["path"]?.stringValue ?? source), \(how)")
    }
}

struct Unload: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Unload a model from the daemon.")
    @OptionGroup var options: ClientOptions
    @Argument var name: String

    func run() throws {
        let reply = try options.call("models.unload", ["name": .string(name)])
        if options.json { return options.printJSON(reply) }
        print(reply["freed"]?.boolValue == true ? "unloaded \(name)" : "unloaded \(name) (its weights stay: another name shares them)")
    }
}

struct Describe: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print a loaded model's module tree, as print(model) does.")
    @OptionGroup var options: ClientOptions
    @Argument var name: String

    func run() throws {
        let reply = try options.call("models.describe", ["name": .string(name), "sites": .bool(options.json)])
        if options.json { return options.printJSON(reply) }
        print(reply["printed"]?.stringValue ?? "")
    }
}

struct Tokenize: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show how a loaded model's tokenizer splits a text.")
    @OptionGroup var options: ClientOptions
    @Argument var name: String
    @Argument var text: String

    func run() throws {
        let reply = try options.call("tokenize", ["model": .string(name), "text": .string(text)])
        if options.json { return options.printJSON(reply) }
        let ids = reply["tokens"]?.arrayValue ?? []
        let pieces = reply["pieces"]?.arrayValue ?? []
        printTable(["ID", "TOKEN"], zip(ids, pieces).map { [String($0.intValue ?? 0), $1.stringValue?.debugDescription ?? "nil"] })
        print("\(ids.count) tokens")
    }
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run a prompt through a loaded model and show the likeliest next tokens.")
    @OptionGroup var options: ClientOptions
    @Argument var name: String
    @Argument(help: "The prompt (with --ids: token ids separated by commas or spaces).") var prompt: String
    @Option(help: "How many of the likeliest next tokens to show.") var top = 5
    @Flag(help: "The prompt is token ids, for models without a tokenizer.") var ids = false

    func run() throws {
        var fields: [String: MessageValue] = ["model": .string(name), "top_k": MessageValue(top)]
        if ids {
            let numbers = prompt.split(whereSeparator: { $0 == "," || $0 == " " }).compactMap { Int($0) }
            guard !numbers.isEmpty else { throw ValidationError("--ids needs token ids such as '3260, 1757'") }
            fields["tokens"] = [MessageValue(numbers)]
        } else {
            fields["prompts"] = [.string(prompt)]
        }
        let reply = try options.call("forward", fields)
        let tokens = reply["tokens"]?.arrayValue?.first ?? []
        let best = reply["top"]?.arrayValue?.first?.arrayValue?.first?.arrayValue ?? []
        if options.json {
            return print(MessageValue.map(["tokens": tokens, "top": .array(best)]).jsonText(pretty: true))
        }
        print("\(tokens.arrayValue?.count ?? 0) tokens; likeliest next:")
        printTable(["LOGIT", "ID", "TOKEN"], best.map { entry in
            [String(format: "%.3f", entry["logit"]?.doubleValue ?? 0), String(entry["id"]?.intValue ?? 0),
             entry["token"]?.stringValue?.debugDescription ?? "-"]
        })
    }
}

struct Generate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate text from a prompt on a loaded model, printing it as the tokens come.",
        discussion: "Greedy unless sampling is asked for: --sample, or any of --temperature, --top-k, --top-p.")
    @OptionGroup var options: ClientOptions
    @Argument var name: String
    @Argument(help: "The prompt (with --ids: token ids separated by commas or spaces).") var prompt: String
    @Option(name: [.short, .customLong("max-new-tokens")], help: "How many tokens to generate at most.") var n = 32
    @Flag(help: "Sample (temperature 1, top-k 50, top-p 1 unless given).") var sample = false
    @Option(help: "Sampling temperature (> 0).") var temperature: Double?
    @Option(help: "Keep the k likeliest tokens (0: all).") var topK: Int?
    @Option(help: "Keep the likeliest tokens whose probabilities sum to p, in (0, 1].") var topP: Double?
    @Option(help: "The sampling seed.") var seed = 0
    @Flag(help: "The prompt is token ids, for models without a tokenizer.") var ids = false

    func run() throws {
        let invoke: MessageValue
        if ids {
            let numbers = prompt.split(whereSeparator: { $0 == "," || $0 == " " }).compactMap { Int($0) }
            guard !numbers.isEmpty else { throw ValidationError("--ids needs token ids such as '3260, 1757'") }
            invoke = ["tokens": MessageValue(numbers)]
        } else {
            invoke = ["prompt": .string(prompt)]
        }
        var generate: [String: MessageValue] = ["max_new_tokens": MessageValue(n), "seed": MessageValue(seed)]
        if sample || temperature != nil || topK != nil || topP != nil {
            generate["do_sample"] = true
            if let temperature { generate["temperature"] = .double(temperature) }
            if let topK { generate["top_k"] = MessageValue(topK) }
            if let topP { generate["top_p"] = .double(topP) }
        }
        var streamed = false
        let reply = try options.call("trace", ["model": .string(name), "invokes": [invoke], "nodes": [], "generate": .map(generate)],
                                     interim: { interim in
            guard !options.json, interim["status"] == "tokens", let text = interim["text"]?.arrayValue?.first?.stringValue else { return }
            FileHandle.standardOutput.write(text)
            streamed = true
        })
        if options.json { return options.printJSON(reply) }
        let generation = reply["generation"]
        let count = generation?["tokens"]?.arrayValue?.first?.arrayValue?.count ?? 0
        let finish = generation?["finish"]?.arrayValue?.first?.stringValue ?? "?"
        if streamed { print() }
        var standardError = FileHandle.standardError
        print("\(count) tokens (\(finish))", to: &standardError)
    }
}

struct Stop: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Shut the daemon down gracefully.")
    @OptionGroup var options: ClientOptions

    func run() throws {
        let reply = try options.call("server.shutdown")
        if options.json { return options.printJSON(reply) }
        print("the daemon at \(options.endpoint) is stopping")
    }
}

/// Columns padded to their widest cell.
func printTable(_ header: [String], _ rows: [[String]]) {
    let all = [header] + rows
    let widths = header.indices.map { column in all.map { $0[column].count }.max() ?? 0 }
    for row in all {
        print(zip(row, widths).enumerated().map { index, cell in
            index == row.count - 1 ? cell.0 : cell.0.padding(toLength: cell.1, withPad: " ", startingAt: 0)
        }.joined(separator: "  "))
    }
}
