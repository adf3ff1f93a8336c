import Foundation
import LoupeDaemon
import LoupeWire
import XCTest

/// A load that never returns (the `--debug-ops` source `debug:stall`, which behaves as a read
/// from a hung mount: it never looks at being cancelled) holds up nothing: other loads, a
/// forward pass and `hello` are served meanwhile, its job ends at once when cancelled or past
/// `--max-job-seconds`, and shutting down does not wait for it.
final class StalledLoadTests: XCTestCase {
    func testAStalledLoadHoldsUpNothingAndIsCancelledAtOnce() throws {
        let daemon = try LiveDaemon()
        let stuck = try daemon.client()
        let accepted = try stuck.call("models.load", ["name": "stuck", "source": "debug:stall", "mode": "detach"])
        let job = try XCTUnwrap(accepted.body["job"]?.intValue)

        let start = Date()
        try daemon.call("models.load", ["name": "tiny", "source": "gpt2-tiny"])
        let forward = try daemon.call("forward", ["model": "tiny", "tokens": [[1, 2, 3]], "top_k": 1])
        XCTAssertEqual(forward["top"]?.arrayValue?.count, 1)
        XCTAssertEqual(try daemon.call("hello")["server"], "loupe")
        XCTAssertLessThan(Date().timeIntervalSince(start), 10, "served while the other load is stuck")
        XCTAssertEqual(try daemon.call("jobs.status", ["job": .int(Int64(job))])["state"], "running")
        try daemon.expectError(.unknownModel, "forward", ["model": "stuck", "tokens": [[1]]])

        let cancel = try daemon.call("jobs.cancel", ["job": .int(Int64(job))])
        XCTAssertEqual(cancel["state"], "cancelled", "a load's job ends when cancelled, without waiting for its thread")
        try daemon.expectError(.cancelled, "jobs.result", ["job": .int(Int64(job))])
        // The name is free again, and the same source loads afresh (and stalls afresh).
        let again = try daemon.call("models.load", ["name": "stuck", "source": "debug:stall", "mode": "detach"])
        XCTAssertNotEqual(again["job"]?.intValue, job)
        XCTAssertEqual(try daemon.call("models.list")["models"]?.arrayValue?.count, 1, "only tiny is loaded")

        // Shutting down does not wait for the stuck thread.
        let stopping = Date()
        daemon.stop()
        XCTAssertLessThan(Date().timeIntervalSince(stopping), 5, "shutdown waited on a stuck load")
    }

    func testAStalledLoadEndsAtTheJobTimeLimit() throws {
        let daemon = try LiveDaemon { $0.maxJobSeconds = 1 }
        defer { daemon.stop() }
        let start = Date()
        let error = try daemon.expectError(.tooLarge, "models.load", ["name": "stuck", "source": "debug:stall"])
        XCTAssertTrue(error.message.contains("max-job-seconds"), error.message)
        XCTAssertLessThan(Date().timeIntervalSince(start), 5)
        try daemon.call("models.load", ["name": "tiny", "source": "gpt2-tiny"])
    }

    func testTheStallingSourceNeedsDebugOps() throws {
        let daemon = try LiveDaemon { $0.debugOps = false }
        defer { daemon.stop() }
        try daemon.expectError(.notFound, "models.load", ["name": "stuck", "source": "debug:stall"])
    }

    /// `--max-model-mb`: refused from the headers with `too_large`, and `hello` reports it.
    func testModelOverTheSizeLimitIsRefused() throws {
        let daemon = try LiveDaemon { $0.maxModelBytes = 64 << 10 }
        defer { daemon.stop() }
        XCTAssertEqual(try daemon.call("hello")["limits"]?["max_model_bytes"]?.intValue, 64 << 10)
        let error = try daemon.expectError(.tooLarge, "models.load", ["name": "tiny", "source": "gpt2-tiny"])
        XCTAssertTrue(error.message.contains("--max-model-mb"), error.message)
    }
}
