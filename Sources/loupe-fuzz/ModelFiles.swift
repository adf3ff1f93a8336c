import BuiltInPlugins
import Foundation
import LoupeFormats
import LoupeModels
import LoupeTokenizers

/// The fuzz targets over the model readers. Each writes its input to a file (or files) in a
/// scratch directory and reads it through the same path-based API `models.load` uses, so
/// the real code path is fuzzed: opening, mapping, parsing, checking and converting. A typed
/// error is the expected answer to garbage; a crash, a hang or an oversized allocation is a bug.
enum ModelFiles {
    /// Where inputs are written: $LOUPE_FUZZ_TMP, else /dev/shm (memory, no disk traffic) or
    /// the temporary directory; one directory per process, removed when the process exits.
    static let directory: String = {
        let environment = ProcessInfo.processInfo.environment
        var base = environment["LOUPE_FUZZ_TMP"] ?? "/dev/shm"
        if access(base, W_OK) != 0 { base = NSTemporaryDirectory() }
        let directory = (base as NSString).appendingPathComponent("loupe-fuzz-\(getpid())")
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        atexit { try? FileManager.default.removeItem(atPath: ModelFiles.directory) }
        return directory
    }()

    /// A subdirectory of `directory`, made once.
    static func subdirectory(_ name: String) -> String {
        let path = directory + "/" + name
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// Writes `bytes` to `path` (replacing it), with plain system calls: this runs for every input.
    static func write<Bytes: Collection<UInt8>>(_ bytes: Bytes, to path: String) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard fd >= 0 else { fatalError("cannot write \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let data = Array(bytes)
        var written = 0
        while written < data.count {
            let count = data.withUnsafeBytes { Foundation.write(fd, $0.baseAddress! + written, data.count - written) }
            guard count > 0 else { fatalError("cannot write \(path): \(String(cString: strerror(errno)))") }
            written += count
        }
    }

    /// Writes `bytes` to `path`, or removes `path` when there are none to write.
    static func write<Bytes: Collection<UInt8>>(optional bytes: Bytes?, to path: String) {
        if let bytes { write(bytes, to: path) } else { unlink(path) }
    }

    // MARK: gguf

    static let ggufPath = subdirectory("gguf") + "/model.gguf"

    /// A GGUF file: header, metadata, tensor infos, then every tensor it lists converted to
    /// float32 (every type Loupe dequantizes), as a model load would.
    static func gguf(_ bytes: UnsafeRawBufferPointer) throws -> String {
        write(bytes, to: ggufPath)
        let file = try GGUFFile(path: ggufPath)
        var converted = 0
        for name in file.tensorNames {
            _ = file.shape(of: name)
            _ = file.typeName(of: name)
            if (try? file.tensor(name)) != nil { converted += 1 }
        }
        return "\(file.tensorNames.count) tensors, \(converted) converted, \(file.metadata.count) metadata keys"
    }

    // MARK: safetensors

    static let safetensorsPath = subdirectory("safetensors") + "/model.safetensors"

    /// A safetensors file: the header, then every tensor it lists converted to float32.
    static func safetensors(_ bytes: UnsafeRawBufferPointer) throws -> String {
        write(bytes, to: safetensorsPath)
        let file = try SafetensorsFile(path: safetensorsPath)
        var converted = 0
        for name in file.tensorNames {
            _ = file.shape(of: name)
            _ = file.dtypeName(of: name)
            if (try? file.tensor(name)) != nil { converted += 1 }
        }
        return "\(file.tensorNames.count) tensors, \(converted) converted"
    }

    // MARK: config

    /// Every registered architecture with the tiny fixture weights it loads: the input is a
    /// config.json, interpreted by each adapter over real weights, and a model that loads
    /// runs a forward pass.
    static let architectures: [(adapter: any ArchitectureAdapter.Type, weights: SafetensorsDirectory)] = {
        let models = ProcessInfo.processInfo.environment["LOUPE_FUZZ_MODELS"]
            ?? Fuzz.repository.appendingPathComponent("Tests/Fixtures/models").path
        // Each built-in architecture with the first fixture of a model type it runs.
        let fixtures = ((try? FileManager.default.contentsOfDirectory(atPath: models)) ?? []).sorted().compactMap { name in
            (try? HFConfig(path: "\(models)/\(name)/config.json")).flatMap { config in config.string("model_type").map { ($0, "\(models)/\(name)") } }
        }
        do {
            return try BuiltInPlugins.architectures.map { adapter in
                guard let (_, directory) = fixtures.first(where: { adapter.modelTypes.contains($0.0) }) else {
                    fatalError("no fixture in \(models) for the \(adapter.name) architecture")
                }
                return (adapter, try SafetensorsDirectory(directory: directory))
            }
        } catch {
            fatalError("cannot read the fixture weights in \(models): \(error) (set LOUPE_FUZZ_MODELS)")
        }
    }()

    static let configPath = subdirectory("config") + "/config.json"

    static func config(_ bytes: UnsafeRawBufferPointer) throws -> String {
        write(bytes, to: configPath)
        let config = try HFConfig(path: configPath)
        var outcomes: [String] = []
        for (adapter, weights) in architectures {
            do {
                let model = try adapter.load(.huggingFace(config: config, weights: weights))
                let tokens = (0..<4).map { $0 % max(model.dimensions.vocabulary, 1) }
                _ = try model.forward(TokenBatch([tokens]), logits: .last)
                outcomes.append("\(adapter.name): loaded and ran")
            } catch {
                outcomes.append("\(adapter.name): \(error)")
            }
        }
        return outcomes.joined(separator: "; ")
    }

    // MARK: tokenizer

    /// The formats of the tokenizer target, picked by the input's first byte (modulo their
    /// count); the rest is the file's content, or the files' contents joined by
    /// `Fuzz.separator`: the main file, then the second file of a pair, then an optional
    /// tokenizer_config.json beside them.
    enum TokenizerFormat: Int, CaseIterable {
        case tokenizerJSON, vocabAndMerges, encoderAndVocabBPE, gguf

        var files: [String] {
            switch self {
            case .tokenizerJSON: ["tokenizer.json", "tokenizer_config.json"]
            case .vocabAndMerges: ["vocab.json", "merges.txt", "tokenizer_config.json"]
            case .encoderAndVocabBPE: ["encoder.json", "vocab.bpe", "tokenizer_config.json"]
            case .gguf: ["tokenizer.gguf"]
            }
        }
    }

    static let tokenizerDirectories = TokenizerFormat.allCases.map { subdirectory("tokenizer-\($0)") }

    /// Text with what tokenizers trip on: added-token look-alikes, digits, runs of spaces and
    /// newlines, combining marks, emoji, a lone surrogate's replacement, bytes 0x80-0xFF.
    static let sampleText = "Hello world, 123456 <|endoftext|><|im_start|> John's  \n\n\t  héllo e\u{301} 🦙.cpp \u{FFFD}\u{0} 中文 ĠJohn"

    static func tokenizer(_ bytes: UnsafeRawBufferPointer) throws -> String {
        guard let first = bytes.first else { return "empty input" }
        let format = TokenizerFormat(rawValue: Int(first) % TokenizerFormat.allCases.count)!
        let directory = tokenizerDirectories[format.rawValue]
        let contents = Fuzz.frames(UnsafeRawBufferPointer(rebasing: bytes.dropFirst()))
        let paths = format.files.map { directory + "/" + $0 }
        for (i, path) in paths.enumerated() {
            write(optional: i < contents.count ? contents[i] : (i < 2 && format != .tokenizerJSON ? [] : nil), to: path)
        }
        let tokenizer: Tokenizer
        switch format {
        case .tokenizerJSON: tokenizer = try Tokenizer.load(tokenizerJSON: paths[0])
        case .vocabAndMerges: tokenizer = try Tokenizer.load(vocabJSON: paths[0], merges: paths[1])
        case .encoderAndVocabBPE: tokenizer = try Tokenizer.load(encoderJSON: paths[0], vocabBPE: paths[1])
        case .gguf: tokenizer = try Tokenizer.load(ggufFile: paths[0])
        }
        // Use it: encode text (the sample, and the input's own first bytes as text), decode
        // the ids back and the first ids of the vocabulary, look tokens up.
        let own = String(decoding: contents[0].prefix(256), as: UTF8.self)
        var total = 0
        for text in [sampleText, own] {
            let ids = tokenizer.encode(text)
            precondition(ids.allSatisfy { $0 >= 0 && $0 < tokenizer.vocabularySize }, "encode gave an id outside the vocabulary")
            _ = tokenizer.decode(ids)
            _ = tokenizer.preTokenize(text)
            total += ids.count
        }
        _ = tokenizer.decode(Array(0..<min(tokenizer.vocabularySize, 300)) + [-1, Int.max, Int.min])
        for id in [0, tokenizer.vocabularySize - 1, tokenizer.vocabularySize, -1] {
            if let token = tokenizer.tokenString(id) { _ = tokenizer.id(forToken: token) }
        }
        return "\(format): \(tokenizer.vocabularySize) ids, \(total) tokens encoded"
    }
}
