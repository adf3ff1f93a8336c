import Foundation
import LoupeFormats
import XCTest

/// Model files are read only from regular files: a FIFO, a socket or a directory where a file
/// should be is refused at once, never waited on (opening a FIFO for reading blocks until a
/// writer comes, and once stalled a load forever).
final class RegularFileTests: XCTestCase {
    /// Runs `body` on another thread and fails (instead of hanging the suite) if it blocks.
    private func withinSeconds(_ seconds: Double, _ what: String, _ body: @escaping @Sendable () -> Void) {
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread { body(); done.signal() }
        if done.wait(timeout: .now() + seconds) == .timedOut { XCTFail("\(what) blocked for \(seconds) s") }
    }

    private func assertRefused(_ what: String, kind: String, _ read: @escaping @Sendable () throws -> Void) {
        withinSeconds(5, what) {
            do {
                try read()
                XCTFail("\(what): read")
            } catch {
                XCTAssertEqual((error as? FormatError)?.kind, .io, "\(what): \(error)")
                XCTAssertTrue("\(error)".contains(kind), "\(what): \(error)")
            }
        }
    }

    func testFIFOsAndDirectoriesAreRefusedWithoutBlocking() throws {
        let directory = try makeTemporaryDirectory(self)
        let fifo = directory + "/model.gguf"
        XCTAssertEqual(mkfifo(fifo, 0o600), 0)
        assertRefused("GGUF from a FIFO", kind: "a FIFO") { _ = try GGUFFile(path: fifo) }
        assertRefused("safetensors from a FIFO", kind: "a FIFO") { _ = try SafetensorsFile(path: fifo) }
        assertRefused("config from a FIFO", kind: "a FIFO") { _ = try HFConfig(path: fifo) }
        assertRefused("JSON from a FIFO", kind: "a FIFO") { _ = try JSONValue.parse(contentsOf: fifo) }
        let folder = directory + "/config.json"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: false)
        assertRefused("config from a directory", kind: "a directory") { _ = try HFConfig(path: folder) }
        assertRefused("a device", kind: "a character device") { _ = try GGUFFile(path: "/dev/zero") }
    }

    func testTextFilesOverTheLimitAreRefusedBeforeReading() throws {
        let path = try makeTemporaryDirectory(self) + "/config.json"
        try Data("{}".utf8).write(to: URL(fileURLWithPath: path))
        XCTAssertEqual(try readRegularFile(path, limit: 2), Array("{}".utf8))
        XCTAssertThrowsError(try readRegularFile(path, limit: 1)) { XCTAssertEqual(($0 as? FormatError)?.kind, .badValue) }
    }

    /// An index naming a shard outside the model's directory is refused before it is opened.
    func testShardNamesStayInTheDirectory() throws {
        let directory = try makeTemporaryDirectory(self)
        for shard in ["../model.safetensors", "/etc/passwd", ".."] {
            let index = #"{"weight_map": {"w": "\#(shard)"}}"#
            try Data(index.utf8).write(to: URL(fileURLWithPath: directory + "/model.safetensors.index.json"))
            XCTAssertThrowsError(try SafetensorsDirectory(directory: directory)) { error in
                XCTAssertEqual((error as? FormatError)?.kind, .badValue, "\(shard): \(error)")
                XCTAssertEqual((error as? FormatError)?.item, "w")
            }
        }
    }

    /// A cancelled load's readers stop before converting another tensor.
    func testCancelledControlStopsTensorReads() throws {
        let control = LoadControl()
        let file = try SafetensorsFile(path: fixtures + "/tiny.safetensors", control: control)
        let name = try XCTUnwrap(file.tensorNames.first)
        XCTAssertNoThrow(try file.tensor(name))
        control.cancel()
        XCTAssertThrowsError(try file.tensor(name)) { XCTAssertTrue($0 is LoadCancelled) }
    }
}
