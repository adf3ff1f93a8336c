import Foundation
import LoupeWire
import XCTest

/// `loupe serve` as a separate process, as users run it: for tests that read its memory
/// from /proc, send it signals, or restart it.
final class DaemonProcess {
    let endpoint: String
    let socketPath: String
    let arguments: [String]
    private(set) var process: Process
    private let logPath: String

    /// Starts `loupe serve` on a fresh ipc socket with the fixture models directory, plus
    /// `arguments`; returns once it answers `hello`.
    init(_ arguments: [String] = [], socketPath: String? = nil) throws {
        self.socketPath = socketPath ?? NSTemporaryDirectory() + "loupe-proc-\(UUID().uuidString.prefix(8)).sock"
        endpoint = "ipc://" + self.socketPath
        logPath = self.socketPath + ".log"
        self.arguments = ["serve", "--endpoint", endpoint, "--models-dir", Fixtures.modelsDirectory, "--log-level", "warning"] + arguments
        process = Process()
        try launch()
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
        try? FileManager.default.removeItem(atPath: logPath)
        try? FileManager.default.removeItem(atPath: socketPath)
    }

    var pid: Int32 { process.processIdentifier }

    /// Starts it again with the same arguments (after it has exited).
    func restart() throws {
        XCTAssertFalse(process.isRunning)
        process = Process()
        try launch()
    }

    private func launch() throws {
        process.executableURL = URL(fileURLWithPath: try LoupeProcess.executable)
        process.arguments = arguments
        // The log goes to a file: a pipe nobody reads would block the daemon once full.
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        process.standardError = FileHandle(forWritingAtPath: logPath)
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        // Serving, and every --preload model loaded (preloads load while the daemon serves).
        let preloads = arguments.filter { $0 == "--preload" }.count
        let deadline = Date().addingTimeInterval(120)
        while Date() < deadline {
            guard process.isRunning else { throw Failure("loupe serve exited at start: \(log)") }
            if let list = try? WireClient(endpoint: endpoint, timeout: 0.2).call("models.list"),
               list.body["models"]?.arrayValue?.count ?? 0 >= preloads { return }
            Thread.sleep(forTimeInterval: 0.05)
        }
        throw Failure("loupe serve did not answer with its models within 120 s: \(log)")
    }

    /// What it has logged.
    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Its resident memory, from /proc/PID/status (VmRSS).
    func residentBytes() throws -> Int {
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kilobytes = line.split(separator: " ").dropFirst().first.flatMap({ Int($0) })
        else { throw Failure("no VmRSS in /proc/\(pid)/status") }
        return kilobytes * 1024
    }

    /// Sends `signal` and waits for the exit; the exit status, or nil if it outlived `timeout`.
    @discardableResult
    func stop(signal: Int32 = SIGTERM, timeout: Double = 30) -> Int32? {
        kill(pid, signal)
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.02) }
        guard !process.isRunning else { return nil }
        return process.terminationStatus
    }

    struct Failure: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }
}
