import Foundation
import LoupeTestSupport
import LoupeWire
import XCTest

/// Hostile model files (RELIABILITY.md, "Hostile input"): the catalogue that
/// scripts/make_hostile_models.py writes, each entry loaded with `models.load` into one
/// `loupe serve` process of its own. Each must get the typed error its manifest names, in
/// bounded time, with a message that names the file; `hello` must answer after each; the
/// daemon's resident memory must end within 50 MB of where it started; and the real SmolLM2
/// must then load and give the reference logits.
final class HostileModelFileTests: XCTestCase {
    /// How long one load of a hostile file may take to be answered.
    static let caseSeconds = 20.0
    /// Resident memory the whole catalogue may leave behind: 50 MB.
    static let memoryBound = 50_000_000

    struct Manifest: Decodable {
        struct Entry: Decodable {
            let name: String
            let source: String
            let tests: String
            let expect: String?
            let mentions: String?
        }
        let root: String
        let maxModelMb: Int
        let controls: [Entry]
        let cases: [Entry]
    }

    func testEveryHostileModelFileGetsATypedErrorAndTheDaemonKeepsServing() throws {
        let started = Date()
        let smol = try Fixtures.smol()
        let (directory, manifest) = try makeCatalogue()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let root = directory + "/" + manifest.root
        XCTAssertGreaterThanOrEqual(manifest.cases.count, 55)
        XCTAssertEqual(Set(manifest.cases.map(\.name)).count, manifest.cases.count, "case names are unique")

        let daemon = try BoundedDaemon(["--model-root", root, "--model-root", (smol as NSString).deletingLastPathComponent]
                                       + (try Self.modelLimitArguments(manifest)))
        defer { daemon.stop() }
        var client = try daemon.client()
        var nextID: Int64 = 1
        func load(_ name: String, _ source: String, bound: Double = Self.caseSeconds) throws -> LoadOutcome {
            nextID += 1
            return try daemon.exchange(client, ["id": .int(nextID), "op": "models.load", "name": .string(name), "source": .string(source)], bound: bound)
        }
        func hello() throws -> LoadOutcome {
            nextID += 1
            return try daemon.exchange(client, ["id": .int(nextID), "op": "hello"], bound: 5)
        }

        // Resident memory after a warm-up hello is where the daemon starts. Then each base the
        // cases derive from must load (and is unloaded again).
        guard case .reply(let first) = try hello(), first["server"] == "loupe" else { return XCTFail("no hello from the daemon: \(daemon.log)") }
        let baseline = try daemon.residentBytes()
        for (index, control) in manifest.controls.enumerated() {
            guard case .reply(let reply) = try load("control-\(index)", root + "/" + control.source, bound: 60) else {
                return XCTFail("control \(control.name) (\(control.tests)) was not answered: \(daemon.log)")
            }
            XCTAssertEqual(reply["status"], "ok", "the control \(control.name) must load, or the cases derived from it prove nothing: \(reply)")
            nextID += 1
            _ = try daemon.exchange(client, ["id": .int(nextID), "op": "models.unload", "name": .string("control-\(index)")], bound: 10)
        }
        var peak = try daemon.residentBytes()
        var failures = [String]()
        let catalogueStarted = Date()

        for (index, entry) in manifest.cases.enumerated() {
            let expected = entry.expect ?? "?"
            let caseStarted = Date()
            let logBefore = daemon.log.count
            let outcome = try load("case-\(index)", root + "/" + entry.source)
            let seconds = Date().timeIntervalSince(caseStarted)
            var problem: String?
            switch outcome {
            case .reply(let reply):
                let code = reply["error"]?["code"]?.stringValue
                let message = reply["error"]?["message"]?.stringValue ?? ""
                if reply["status"] != "error" {
                    problem = "loaded (status \(reply["status"]?.stringValue ?? "nil")) instead of \(expected)"
                    nextID += 1
                    _ = try daemon.exchange(client, ["id": .int(nextID), "op": "models.unload", "name": .string("case-\(index)")], bound: 10)
                } else if code != expected {
                    problem = "\(code ?? "no code") instead of \(expected): \(message)"
                } else if message.isEmpty {
                    problem = "\(expected) without a message"
                } else if let mentions = entry.mentions, !message.contains(mentions) {
                    problem = "\(expected), but the message does not name '\(mentions)': \(message)"
                }
            case .crashed(let status):
                let log = String(daemon.log.dropFirst(logBefore))
                let said = Self.crashSummary(log)
                problem = "the daemon died (\(status)) after \(String(format: "%.1f", seconds)) s: \(said.isEmpty ? String(log.suffix(300)) : said)"
            case .timedOut:
                problem = "no reply within \(Int(Self.caseSeconds)) s (the load hangs)"
            }
            if case .reply = outcome {
                guard case .reply(let reply) = try hello(), reply["server"] == "loupe" else {
                    problem = (problem.map { $0 + "; " } ?? "") + "hello was not answered after it"
                    failures.append("\(entry.name) [\(entry.tests)]: \(problem!)")
                    XCTFail("\(entry.name): \(problem!)")
                    try daemon.restart()
                    client = try daemon.client()
                    continue
                }
                peak = max(peak, try daemon.residentBytes())
            } else {
                // A daemon that crashed or hangs is started afresh, so the rest of the catalogue still runs.
                try daemon.restart()
                client = try daemon.client()
            }
            if let problem {
                failures.append("\(entry.name) [\(entry.tests)], expected \(expected): \(problem)")
                XCTFail("\(entry.name) (\(entry.tests)): \(problem)")
            }
        }
        let catalogueSeconds = Date().timeIntervalSince(catalogueStarted)
        let final = try daemon.residentBytes()
        if daemon.restarts == 0 {
            XCTAssertLessThan(final - baseline, Self.memoryBound,
                              "the catalogue left resident memory at \(final / 1_000_000) MB, from \(baseline / 1_000_000) MB at the start")
        } else {
            XCTFail("the daemon was restarted \(daemon.restarts) times (crashes and hangs above): its memory over the catalogue was not measured")
        }
        print("hostile model files: \(manifest.cases.count) cases in \(String(format: "%.1f", catalogueSeconds)) s, \(failures.count) failing, "
              + "\(daemon.restarts) restarts; resident memory \(baseline / 1_000_000) MB at the start, \(peak / 1_000_000) MB at most, \(final / 1_000_000) MB at the end")
        for failure in failures { print("  FAILING \(failure)") }

        // Then the real model loads and computes what it always has.
        let smolStarted = Date()
        guard case .reply(let loaded) = try load("smol", smol, bound: 300) else { return XCTFail("SmolLM2's load was not answered: \(daemon.log)") }
        XCTAssertEqual(loaded["status"], "ok", "\(loaded)")
        try checkSmolLogits(client: client)
        print("hostile model files: SmolLM2 loaded and checked in \(String(format: "%.1f", Date().timeIntervalSince(smolStarted))) s; the test took \(String(format: "%.1f", Date().timeIntervalSince(started))) s")
    }

    /// Two clients: A loads a file that never yields its bytes (a FIFO nothing writes to), B
    /// loads SmolLM2 and runs a trace. B is served as if A were not there; A gets an error at
    /// once or can be cancelled. And a load that takes seconds (SmolLM2's, in a daemon that
    /// does not have it yet) stops with `cancelled` when `jobs.cancel` asks.
    func testAStalledLoadNeitherHoldsUpAnotherClientNorResistsCancelling() throws {
        let started = Date()
        let smol = try Fixtures.smol()
        let (directory, manifest) = try makeCatalogue()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let root = directory + "/" + manifest.root
        let fifo = root + "/fifo.gguf"
        XCTAssertTrue(manifest.cases.contains { $0.source == "fifo.gguf" })
        let daemon = try BoundedDaemon(["--model-root", root, "--model-root", (smol as NSString).deletingLastPathComponent])
        defer { daemon.stop() }

        // A slow load is cancelled.
        let canceller = try daemon.client()
        try canceller.send(WireMessage(["id": 1, "op": "models.load", "name": "cancelled", "source": .string(smol), "mode": "stream"]))
        var job: MessageValue = .null
        while job == .null, let reply = try canceller.receive(timeout: 30) {
            job = reply.body["job"] ?? .null
            XCTAssertNotEqual(reply.body["status"], "error", "\(reply.body)")
        }
        XCTAssertNotEqual(job, .null, "the load was not accepted as a job")
        Thread.sleep(forTimeInterval: 1)  // well into the load, which takes seconds
        let cancel = try daemon.client().call("jobs.cancel", ["job": job]).body
        XCTAssertTrue(["cancelling", "cancelled"].contains(cancel["state"]?.stringValue ?? ""), "\(cancel)")
        let cancelAsked = Date()
        var final: MessageValue?
        while final == nil, let reply = try canceller.receive(timeout: 120) {
            if reply.body["status"] == "error" || reply.body["status"] == "ok" { final = reply.body }
        }
        XCTAssertEqual(final?["error"]?["code"], "cancelled", "\(final ?? .null)")
        let cancelSeconds = Date().timeIntervalSince(cancelAsked)
        XCTAssertLessThan(cancelSeconds, 5, "the cancelled load went on for \(cancelSeconds) s")
        let names = try daemon.client().call("models.list").body["models"]?.arrayValue?.compactMap { $0["name"]?.stringValue } ?? []
        XCTAssertFalse(names.contains("cancelled"), "a cancelled load left its name bound: \(names)")

        // A: a load that stalls (or is refused at once).
        let stalled = try daemon.client()
        try stalled.send(WireMessage(["id": 1, "op": "models.load", "name": "stalled", "source": .string(fifo), "mode": "stream"]))
        let stalledSent = Date()

        // B: SmolLM2 and a trace, meanwhile.
        let other = OtherClient(endpoint: daemon.endpoint, smol: smol)
        let thread = Thread { other.run() }
        thread.start()

        var stalledJob: MessageValue = .null
        var stalledFinal: MessageValue?
        while stalledFinal == nil, let reply = try stalled.receive(timeout: 5) {
            stalledJob = reply.body["job"] ?? stalledJob
            if reply.body["status"] == "error" || reply.body["status"] == "ok" { stalledFinal = reply.body }
        }
        var how = "refused in \(String(format: "%.2f", Date().timeIntervalSince(stalledSent))) s"
        if stalledFinal == nil {
            // Still loading after 5 s: it must give way to jobs.cancel.
            XCTAssertNotEqual(stalledJob, .null, "the stalled load said neither its job nor an error")
            let cancelled = Date()
            if stalledJob != .null {
                let reply = try daemon.client().call("jobs.cancel", ["job": stalledJob]).body
                XCTAssertTrue(["cancelling", "cancelled"].contains(reply["state"]?.stringValue ?? ""), "\(reply)")
                while stalledFinal == nil, let reply = try stalled.receive(timeout: 10) {
                    if reply.body["status"] == "error" || reply.body["status"] == "ok" { stalledFinal = reply.body }
                }
            }
            how = "cancelled \(String(format: "%.2f", Date().timeIntervalSince(cancelled))) s after jobs.cancel"
            XCTAssertEqual(stalledFinal?["error"]?["code"], "cancelled", "the stalled load of a FIFO did not end when cancelled: \(stalledFinal ?? .null)")
        } else {
            XCTAssertEqual(stalledFinal?["error"]?["code"], "load_failed", "a FIFO: \(stalledFinal ?? .null)")
        }
        // If the load still hangs, let it go by giving the FIFO a writer (and no bytes), so the
        // test can tell whether B was held up by it.
        var released: Date?
        if stalledFinal == nil {
            let fd = open(fifo, O_WRONLY | O_NONBLOCK)
            if fd >= 0 { close(fd); released = Date() }
            how = "neither refused nor cancelled: it hung until the test opened the FIFO for writing"
        }

        XCTAssertTrue(other.wait(seconds: 300), "client B got no answer within 300 s")
        let outcome = other.outcome()
        if let error = outcome.error { XCTFail("client B: \(error)") }
        XCTAssertEqual(outcome.cleanDifference ?? .nan, 5.137, accuracy: 3e-3)
        XCTAssertEqual(outcome.corruptedDifference ?? .nan, -3.829, accuracy: 3e-3)
        if let released, let loadedAt = outcome.loadedAt {
            XCTAssertLessThan(loadedAt, released, "client B's load waited for the stalled load of the FIFO")
        }
        XCTAssertEqual(try daemon.client().call("hello").body["server"], "loupe")
        print("stalled load: \(how); client B loaded SmolLM2 in \(String(format: "%.1f", outcome.loadSeconds ?? .nan)) s and traced in \(String(format: "%.2f", outcome.traceSeconds ?? .nan)) s; "
              + "a slow load's cancel took \(String(format: "%.1f", cancelSeconds)) s; the test took \(String(format: "%.1f", Date().timeIntervalSince(started))) s")
    }

    // MARK: Helpers

    /// What the Swift runtime said of a crash ("Fatal error: ...", "*** Swift runtime failure:
    /// arithmetic overflow ***") and the crashed thread's first frames in Loupe's sources.
    static func crashSummary(_ log: String) -> String {
        let lines = log.split(separator: "\n").map(String.init)
        var said = lines.filter { $0.hasPrefix("Fatal error") || $0.hasPrefix("*** Swift runtime failure") || $0.hasPrefix("*** Program crashed") }
        if let crashed = lines.firstIndex(where: { $0.hasPrefix("Thread") && $0.hasSuffix("crashed:") }) {
            // "  1   0x0000562ced9eea6c GPT2Model.init(config:weights:) + 10188 in loupe at .../GPT2.swift:53:43"
            said += lines[crashed...].filter { $0.contains(".swift:") }.prefix(3).map { frame in
                guard let address = frame.range(of: " 0x") else { return frame }
                return String(frame[address.upperBound...].drop { $0 != " " }.dropFirst())
            }
        }
        return said.joined(separator: " / ")
    }

    /// Runs the script into a fresh temporary directory; the directory and its manifest.
    private func makeCatalogue() throws -> (String, Manifest) {
        let directory = NSTemporaryDirectory() + "loupe-hostile-\(UUID().uuidString.prefix(8))"
        let script = Fixtures.repository + "/scripts/make_hostile_models.py"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", script, directory]
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        let message = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw DaemonProcess.Failure("\(script) failed: \(message)") }
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        let manifest = try decoder.decode(Manifest.self, from: Data(contentsOf: URL(fileURLWithPath: directory + "/manifest.json")))
        return (directory, manifest)
    }

    /// `--max-model-mb`, when this `loupe serve` has it (without it the `too_large` cases fail).
    private static func modelLimitArguments(_ manifest: Manifest) throws -> [String] {
        let help = try LoupeProcess.run(["serve", "--help"])
        return (help.output + help.errors).contains("--max-model-mb") ? ["--max-model-mb", String(manifest.maxModelMb)] : []
    }

    /// SmolLM2's logits against transformers' (Tests/Fixtures/models/smollm2-golden.json): the
    /// tutorial's IOI pair's logit differences and the top-20 logits of two short golden
    /// prompts, in one batch (the others would only make a debug build slower).
    private func checkSmolLogits(client: WireClient) throws {
        struct Golden: Decodable {
            struct Pair: Decodable {
                struct Run: Decodable { let ids: [Int]; let logit_diff: Float }
                let answer_ids: [Int]
                let clean: Run
                let corrupted: Run
            }
            struct Prompt: Decodable { let label: String; let ids: [Int]; let top20_ids: [Int]; let top20_logits: [Float] }
            let ioi_seed: Pair
            let prompts: [Prompt]
        }
        let golden = try JSONDecoder().decode(Golden.self, from: Data(contentsOf: URL(fileURLWithPath: fixturesDirectory + "/models/smollm2-golden.json")))
        let prompts = golden.prompts.filter { ["question", "one_token"].contains($0.label) }
        XCTAssertEqual(prompts.count, 2)
        let rows = [golden.ioi_seed.clean.ids, golden.ioi_seed.corrupted.ids] + prompts.map(\.ids)
        client.timeout = 300
        let reply = try client.call("forward", ["model": "smol", "tokens": .array(rows.map { MessageValue($0) }), "logits": true, "mode": "wait"]).body
        let logits = try WireTensor(XCTUnwrap(reply["logits"])).floats()
        let vocabulary = 49_152
        XCTAssertEqual(logits.count, rows.count * vocabulary)
        guard logits.count == rows.count * vocabulary else { return }
        func logit(_ row: Int, _ id: Int) -> Float { logits[row * vocabulary + id] }
        let (answer, wrong) = (golden.ioi_seed.answer_ids[0], golden.ioi_seed.answer_ids[1])
        XCTAssertEqual(logit(0, answer) - logit(0, wrong), golden.ioi_seed.clean.logit_diff, accuracy: 3e-3, "the clean logit difference")
        XCTAssertEqual(logit(1, answer) - logit(1, wrong), golden.ioi_seed.corrupted.logit_diff, accuracy: 3e-3, "the corrupted logit difference")
        for (index, prompt) in prompts.enumerated() {
            for (id, expected) in zip(prompt.top20_ids, prompt.top20_logits) {
                XCTAssertEqual(logit(index + 2, id), expected, accuracy: 3e-3, "\(prompt.label): token \(id)")
            }
        }
    }
}

/// What a load (or any request) came to.
private enum LoadOutcome {
    case reply(MessageValue)
    case crashed(String)
    case timedOut
}

/// `loupe serve` in a process of its own under a bound on its address space (`ulimit -v`),
/// so a loader that allocates without end fails the test instead of exhausting the
/// machine; restarted afresh after a crash or a hang.
private final class BoundedDaemon {
    /// 8 GiB: SmolLM2 needs 1.4 GB, the sparse over-the-limit cases map 4 GiB.
    static let addressSpaceKiB = 8 << 20
    let arguments: [String]
    private(set) var endpoint = ""
    private(set) var restarts = 0
    private var process = Process()
    private var socketPath = ""
    private let logPath = NSTemporaryDirectory() + "loupe-hostile-\(UUID().uuidString.prefix(8)).log"

    init(_ arguments: [String]) throws {
        self.arguments = arguments
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        try launch()
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(atPath: logPath)
    }

    private func launch() throws {
        socketPath = NSTemporaryDirectory() + "loupe-hostile-\(UUID().uuidString.prefix(8)).sock"
        endpoint = "ipc://" + socketPath
        process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", "ulimit -v \(Self.addressSpaceKiB) && exec \"$0\" \"$@\"", try LoupeProcess.executable,
                             "serve", "--endpoint", endpoint, "--log-level", "warning"] + arguments
        let log = FileHandle(forWritingAtPath: logPath)
        log?.seekToEndOfFile()
        process.standardError = log
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            guard process.isRunning else { throw DaemonProcess.Failure("loupe serve exited at start: \(self.log)") }
            if (try? WireClient(endpoint: endpoint, timeout: 0.2).call("hello")) != nil { return }
            Thread.sleep(forTimeInterval: 0.05)
        }
        throw DaemonProcess.Failure("loupe serve did not answer within 60 s: \(self.log)")
    }

    func client() throws -> WireClient { try WireClient(endpoint: endpoint, timeout: 60) }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Sends `body` and waits up to `bound` seconds for the reply with its id, watching the process.
    func exchange(_ client: WireClient, _ body: MessageValue, bound: Double) throws -> LoadOutcome {
        try client.send(WireMessage(body))
        let deadline = Date().addingTimeInterval(bound)
        while Date() < deadline {
            if let reply = try client.receive(timeout: 0.25) {
                if reply.body["id"] == body["id"] { return .reply(reply.body) }
                continue
            }
            if !process.isRunning { return .crashed(exitDescription) }
        }
        return process.isRunning ? .timedOut : .crashed(exitDescription)
    }

    private var exitDescription: String {
        process.waitUntilExit()
        return process.terminationReason == .uncaughtSignal ? "signal \(process.terminationStatus)" : "exit status \(process.terminationStatus)"
    }

    func residentBytes() throws -> Int {
        let status = try String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8)
        guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kilobytes = line.split(separator: " ").dropFirst().first.flatMap({ Int($0) })
        else { throw DaemonProcess.Failure("no VmRSS for the daemon") }
        return kilobytes * 1024
    }

    func restart() throws {
        stop()
        restarts += 1
        try launch()
    }

    func stop() {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: socketPath)
    }
}

/// Client B of the stalled-load test: loads SmolLM2 and runs the tutorial's logit
/// differences as a trace, on its own thread and connection.
private final class OtherClient: @unchecked Sendable {
    struct Report {
        var loadedAt: Date?
        var loadSeconds: Double?
        var traceSeconds: Double?
        var cleanDifference: Float?
        var corruptedDifference: Float?
        var error: String?
    }

    private let endpoint: String
    private let smol: String
    private let condition = NSCondition()
    private var result = Report()
    private var finished = false

    init(endpoint: String, smol: String) {
        self.endpoint = endpoint
        self.smol = smol
    }

    func run() {
        var outcome = Report()
        do {
            let client = try WireClient(endpoint: endpoint, timeout: 60)
            let start = Date()
            _ = try client.call("models.load", ["name": "smol", "source": .string(smol)])
            outcome.loadedAt = Date()
            outcome.loadSeconds = Date().timeIntervalSince(start)
            let traced = Date()
            let difference: (Int64, Int64) -> [MessageValue] = { invoke, first in [
                ["id": .int(first), "op": "get", "invoke": .int(invoke), "site": "logits"],
                ["id": .int(first + 1), "op": "index", "x": ["ref": .int(first)], "key": [0, -1, 2322]],
                ["id": .int(first + 2), "op": "index", "x": ["ref": .int(first)], "key": [0, -1, 5099]],
                ["id": .int(first + 3), "op": "sub", "x": ["ref": .int(first + 1)], "y": ["ref": .int(first + 2)]],
                ["id": .int(first + 4), "op": "save", "name": .string("diff\(invoke)"), "x": ["ref": .int(first + 3)]],
            ] }
            let reply = try client.call("trace", [
                "model": "smol",
                "invokes": [["prompt": .string(Fixtures.cleanPrompt)], ["prompt": .string(Fixtures.corruptedPrompt)]],
                "nodes": .array(difference(0, 0) + difference(1, 10)),
            ]).body
            outcome.traceSeconds = Date().timeIntervalSince(traced)
            outcome.cleanDifference = try WireTensor(reply["saved"]?["diff0"] ?? .null).floats().first
            outcome.corruptedDifference = try WireTensor(reply["saved"]?["diff1"] ?? .null).floats().first
        } catch {
            outcome.error = "\(error)"
        }
        condition.lock()
        result = outcome
        finished = true
        condition.broadcast()
        condition.unlock()
    }

    func wait(seconds: Double) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        condition.lock()
        defer { condition.unlock() }
        while !finished { if !condition.wait(until: deadline) { return finished } }
        return true
    }

    func outcome() -> Report {
        condition.lock()
        defer { condition.unlock() }
        return result
    }
}
