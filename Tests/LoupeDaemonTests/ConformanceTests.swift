import CZMQ
import Foundation
import LoupeWire
import XCTest

/// Protocol/vectors/ replayed against live daemons: by this test over a DEALER socket, and
/// by scripts/conformance.py over a REQ socket (delimiter framing, another MessagePack).
final class ConformanceTests: XCTestCase {
    struct Manifest: Decodable {
        struct Vector: Decodable { let name: String; let variable: [String] }
        struct Tolerance: Decodable { let absolute: Double; let relative: Double }
        let protocol_: Int
        let variable: [String]
        let float_tolerance: Tolerance
        let vectors: [Vector]
        enum CodingKeys: String, CodingKey { case protocol_ = "protocol", variable, float_tolerance, vectors }
    }

    static let directory = Fixtures.repository + "/Protocol/vectors"

    private func manifest() throws -> Manifest {
        try JSONDecoder().decode(Manifest.self, from: Data(contentsOf: URL(fileURLWithPath: Self.directory + "/manifest.json")))
    }

    private func bytes(_ name: String) throws -> [UInt8] {
        Array(try Data(contentsOf: URL(fileURLWithPath: "\(Self.directory)/\(name).msgpack")))
    }

    /// A fresh daemon as the vectors expect it: fixture models, no test-only ops, default limits.
    private func conformingDaemon() throws -> LiveDaemon {
        try LiveDaemon { $0.debugOps = false }
    }

    func testVectorsAgainstALiveDaemon() throws {
        let manifest = try manifest()
        XCTAssertEqual(manifest.protocol_, WireProtocol.version)
        XCTAssertGreaterThan(manifest.vectors.count, 20)
        let live = try conformingDaemon()
        defer { live.stop() }
        let socket = try ZMQSocket(.dealer)
        try socket.setOption(ZMQ_RCVTIMEO, Int32(30_000))
        try socket.connect(live.endpoint)
        let comparer = VectorComparer(variable: manifest.variable, absolute: manifest.float_tolerance.absolute,
                                      relative: manifest.float_tolerance.relative)
        for vector in manifest.vectors {
            try socket.send([try bytes(vector.name + ".request")])
            let reply = try XCTUnwrap(try socket.receive(), "\(vector.name): no reply")
            let actual = try MessageDecoder.decode(reply[0])
            let expected = try MessageDecoder.decode(try bytes(vector.name + ".reply"))
            let problems = comparer.compare(expected, actual, extraVariable: vector.variable)
            XCTAssertTrue(problems.isEmpty, "\(vector.name) does not conform:\n" + problems.joined(separator: "\n"))
        }
    }

    func testPythonReplayOverREQ() throws {
        let live = try conformingDaemon()
        defer { live.stop() }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", Fixtures.repository + "/scripts/conformance.py", "--endpoint", live.endpoint]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        XCTAssertEqual(process.terminationStatus, 0, text)
    }

    /// Python's msgpack wrote the vectors with sorted keys; this encoder must agree byte for byte.
    func testVectorsAreCanonicalEncodings() throws {
        for vector in try manifest().vectors {
            for side in [".request", ".reply"] {
                let original = try bytes(vector.name + side)
                XCTAssertEqual(MessageEncoder.encode(try MessageDecoder.decode(original)), original, vector.name + side)
            }
        }
    }

    func testComparerFindsDifferences() {
        let comparer = VectorComparer(variable: ["job"], absolute: 1e-3, relative: 1e-3)
        let expected: MessageValue = ["a": 1, "b": [1.5, "x"], "job": 3]
        XCTAssertEqual(comparer.compare(expected, ["a": 1, "b": [1.5004, "x"], "job": 9, "extra": true]), [])
        XCTAssertEqual(comparer.compare(expected, ["a": 2, "b": [1.6, "x"]]).count, 3)
    }
}

/// Field-by-field comparison of a reply with a golden one: numbers within a tolerance,
/// f32 tensors element by element, variable fields for presence only, extra fields allowed.
struct VectorComparer {
    let variable: [String]
    let absolute: Double
    let relative: Double

    func compare(_ expected: MessageValue, _ actual: MessageValue?, extraVariable: [String] = []) -> [String] {
        let patterns = (variable + extraVariable).map { $0.split(separator: ".").map(String.init) }
        return compare(expected, actual, path: [], patterns: patterns)
    }

    private func isVariable(_ path: [String], _ patterns: [[String]]) -> Bool {
        patterns.contains { $0.count == path.count && zip($0, path).allSatisfy { $0 == "*" || $0 == $1 } }
    }

    private func close(_ a: Double, _ b: Double) -> Bool {
        abs(a - b) <= max(absolute, relative * max(abs(a), abs(b)))
    }

    private func compare(_ expected: MessageValue, _ actual: MessageValue?, path: [String], patterns: [[String]]) -> [String] {
        let place = path.isEmpty ? "(reply)" : path.joined(separator: ".")
        guard let actual else { return ["\(place): missing"] }
        if isVariable(path, patterns) { return [] }
        switch expected {
        case .map(let fields):
            guard let got = actual.mapValue else { return ["\(place): expected a map, got \(actual.typeName)"] }
            if fields["dtype"] == "f32", let want = try? WireTensor(expected).floats() {
                guard let tensor = try? WireTensor(actual), tensor.shape == (try? WireTensor(expected).shape),
                      let values = try? tensor.floats() else { return ["\(place): expected an f32 tensor like the golden one"] }
                let bad = zip(want, values).filter { !close(Double($0), Double($1)) }.count
                return bad == 0 ? [] : ["\(place): \(bad) tensor values differ"]
            }
            return fields.keys.sorted().flatMap { compare(fields[$0]!, got[$0], path: path + [$0], patterns: patterns) }
        case .array(let items):
            guard let got = actual.arrayValue, got.count == items.count else {
                return ["\(place): expected \(items.count) elements, got \(actual)"]
            }
            return items.indices.flatMap { compare(items[$0], got[$0], path: path + [String($0)], patterns: patterns) }
        case .double(let want):
            guard let got = actual.doubleValue, close(want, got) else { return ["\(place): expected \(want), got \(actual)"] }
            return []
        default:
            return expected == actual ? [] : ["\(place): expected \(expected), got \(actual)"]
        }
    }
}
