import ArgumentParser
import Foundation
import LoupeWire

/// `loupe ioi --endpoint E`: the same experiment as `loupe ioi`, sent to a daemon, which
/// loads the model once and keeps it warm for the next run.
struct IOIOnDaemon {
    let endpoint: String
    let model: String
    let clean: String
    let corrupted: String
    let answer: String
    let wrong: String

    func run() throws {
        do {
            let client = try WireClient(endpoint: endpoint, curve: CurveClientKeys.fromEnvironment())
            let source = FileManager.default.fileExists(atPath: model) ? URL(fileURLWithPath: model).standardizedFileURL.path : model
            let load = try client.call("models.load", ["name": .string(Self.name(for: source)), "source": .string(source)]).body
            let name = load["name"]?.stringValue ?? ""
            let how = load["shared"]?.boolValue == true ? "already warm"
                : String(format: "loaded in %.2f s", load["load_seconds"]?.doubleValue ?? 0)
            print("\(name) on \(endpoint): \(load["path"]?.stringValue ?? source) (\(load["architecture"]?.stringValue ?? "?"), \(load["dimensions"]?["layers"]?.intValue ?? 0) layers), \(how)")

            // An answer is tokenized without special tokens: `tokenize` puts BOS first where the
            // tokenizer adds one (Gemma's), so drop it.
            let addsBOS = try client.call("models.describe", ["name": .string(name), "sites": false]).body["tokenizer"]?["adds_bos"]?.boolValue ?? false
            var ids = [Int]()
            for text in [answer, wrong] {
                let tokens = Array((try client.call("tokenize", ["model": .string(name), "text": .string(text)]).body["tokens"]?.arrayValue ?? [])
                    .dropFirst(addsBOS ? 1 : 0))
                guard tokens.count == 1, let id = tokens[0].intValue else { throw ValidationError("each answer must be one token, '\(text)' is \(tokens.count)") }
                ids.append(id)
            }
            let reply = try client.call("forward", ["model": .string(name), "prompts": [.string(clean), .string(corrupted)],
                                                    "top_k": 5, "logits": true]).body
            let logits = try WireTensor(reply["logits"] ?? nil).floats()
            let vocabulary = logits.count / 2
            print("next token after the clean prompt:")
            for entry in reply["top"]?.arrayValue?.first?.arrayValue?.first?.arrayValue ?? [] {
                print(String(format: "  %8.3f  %6d  %@", entry["logit"]?.doubleValue ?? 0, entry["id"]?.intValue ?? 0,
                             (entry["token"]?.stringValue ?? "").debugDescription))
            }
            for (row, label) in ["clean", "corrupted"].enumerated() {
                let difference = logits[row * vocabulary + ids[0]] - logits[row * vocabulary + ids[1]]
                print(String(format: "%@ logit difference (%@ - %@): %.3f", label, answer.debugDescription, wrong.debugDescription, difference))
            }
            print(String(format: "forward pass of both prompts: %.1f ms (in the daemon)", reply["timing"]?["run_ms"]?.doubleValue ?? 0))
        } catch let error as ClientError {
            var standardError = FileHandle.standardError
            print("loupe: \(error)", to: &standardError)
            throw ExitCode.failure
        }
    }

    /// A model name from the source's file name: the characters names allow, at most 64.
    static func name(for source: String) -> String {
        let base = URL(fileURLWithPath: source).lastPathComponent
        let allowed = base.unicodeScalars.map { $0.isASCII && (CharacterSet.alphanumerics.contains($0) || "._-".unicodeScalars.contains($0)) ? Character($0) : "-" }
        return String(String(allowed).prefix(64))
    }
}
