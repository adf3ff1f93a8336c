import Foundation
import LoupeFormats
import LoupeTestSupport
import LoupeWire
import XCTest

/// The daemon serves every model family built in: each family's tiny fixture loads by its
/// bare name, describes itself with its HF classes and answers `forward` with HF's logits.
/// (The conformance suite checks each fixture in depth; this is the end-to-end path.)
final class ModelFamilyTests: XCTestCase {
    func testEachFamilyIsServed() throws {
        let live = try LiveDaemon()
        defer { live.stop() }
        let families = [("qwen2-tiny", "qwen2", "Qwen2ForCausalLM("), ("qwen3-tiny", "qwen3", "Qwen3ForCausalLM("),
                        ("llama3-tiny", "llama", "LlamaForCausalLM("), ("pythia-tiny", "gpt_neox", "GPTNeoXForCausalLM("),
                        ("gemma3-tiny", "gemma3", "Gemma3ForCausalLM("), ("gemma2-tiny", "gemma2", "Gemma2ForCausalLM("),
                        ("mistral-tiny", "mistral", "MistralForCausalLM(")]
        for (fixture, architecture, printed) in families {
            let reply = try live.call("models.load", ["name": .string(fixture), "source": .string(fixture)])
            XCTAssertEqual(reply["architecture"], .string(architecture), fixture)
            let described = try live.call("models.describe", ["name": .string(fixture)])
            XCTAssertTrue(described["printed"]?.stringValue?.hasPrefix(printed) ?? false, fixture)

            let directory = fixturesDirectory + "/models/" + fixture
            let cases = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: directory + "/cases.json"))) as! [String: Any]
            let tokens = (cases["sequences"] as! [[Int]])[2]
            let forward = try live.call("forward", ["model": .string(fixture), "tokens": [MessageValue(tokens)], "logits": true])
            let logits = try WireTensor(XCTUnwrap(forward["logits"], fixture)).floats()
            let expected = try SafetensorsFile(path: directory + "/expected.safetensors").tensor("logits.2")
            let vocabulary = expected.shape[1]
            XCTAssertEqual(logits.count, vocabulary, fixture)
            guard logits.count == vocabulary else { continue }
            let last = (0..<vocabulary).map { expected.data[(tokens.count - 1) * vocabulary + $0] }
            let worst = zip(logits, last).map { abs($0 - $1) }.max() ?? .infinity
            XCTAssertLessThan(worst, 1e-4, "\(fixture): last-position logits against HF")
        }
    }
}
