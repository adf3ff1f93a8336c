import BuiltInPlugins
import Foundation
import LoupeDaemon
import LoupeModels
import LoupeTrace
import LoupeWire

/// The fuzz targets, one binary (built once) with the target picked by `--target NAME` (or
/// `--target=NAME`, or $LOUPE_FUZZ_TARGET; `request` when none is given):
///
/// - `request`: the daemon's request path, without sockets: each input is a message's frames
///   (the body, then attachments, separated by `Fuzz.separator`), decoded, read and checked
///   against the tiny GPT-2 fixture as the daemon does, and, when accepted, a forward pass or
///   trace run and its reply encoded.
/// - `gguf`, `safetensors`, `config`, `tokenizer`: the model readers (`ModelFiles`), each
///   input written to a file and read through the path-based API a model load uses.
///
/// Any crash, hang or oversized allocation is a bug; a typed error is the expected answer to
/// garbage. Built with libFuzzer (`scripts/fuzz.sh`: `-sanitize=fuzzer,address -DLOUPE_FUZZER`)
/// it is a libFuzzer binary taking libFuzzer's flags; built plainly (`swift build`) it replays
/// the files or directories it is given, which is how a crash is reproduced under a debugger.
@main
enum Fuzz {
    /// Four bytes MessagePack never uses as a type (nor UTF-8 text), between frames.
    static let separator: [UInt8] = [0xc1, 0xc1, 0xc1, 0xc1]

    enum Target: String, CaseIterable {
        case request, gguf, safetensors, config, tokenizer
    }

    /// Set once in `main`, before any input is run.
    nonisolated(unsafe) static var target = Target.request

    /// This checkout (the fixtures are found from here).
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// The fixture model: $LOUPE_FUZZ_MODEL, else Tests/Fixtures/models/gpt2-tiny in this
    /// checkout. libFuzzer calls the target from one thread only.
    nonisolated(unsafe) static let check: RequestCheck = {
        let path = ProcessInfo.processInfo.environment["LOUPE_FUZZ_MODEL"]
            ?? repository.appendingPathComponent("Tests/Fixtures/models/gpt2-tiny").path
        let registry = BuiltInPlugins.architectureRegistry()
        let interventions = BuiltInPlugins.interventionRegistry()
        var configuration = DaemonConfiguration()
        configuration.modelsDirectory = (path as NSString).deletingLastPathComponent
        configuration.modelRoots = [configuration.modelsDirectory]
        do {
            return try RequestCheck(name: "tiny", model: try LoadedModel.load(path, registry: registry),
                                    configuration: configuration, interventions: interventions)
        } catch {
            fatalError("cannot load the fuzz model \(path): \(error) (set LOUPE_FUZZ_MODEL)")
        }
    }()

    /// One input: any outcome but a crash is fine. Says what happened, for replays.
    @discardableResult
    static func run(_ bytes: UnsafeRawBufferPointer) -> String {
        do {
            switch target {
            case .request:
                if case .failure(let error) = check.check(frames(bytes), run: true) { return "\(error.code.rawValue): \(error.message)" }
                return "ok"
            case .gguf: return try ModelFiles.gguf(bytes)
            case .safetensors: return try ModelFiles.safetensors(bytes)
            case .config: return try ModelFiles.config(bytes)
            case .tokenizer: return try ModelFiles.tokenizer(bytes)
            }
        } catch {
            return "\(type(of: error)): \(error)"
        }
    }

    /// Loads what the target needs before the first input, so that its cost is not charged
    /// to an input (and a broken fixture fails at once).
    static func prepare() {
        switch target {
        case .request: _ = check
        case .gguf, .safetensors, .tokenizer: _ = ModelFiles.directory
        case .config: _ = ModelFiles.architectures
        }
    }

    /// The target named by `--target NAME` or `--target=NAME` (taken out of `arguments`, and
    /// put in the environment so that processes libFuzzer starts, with -fork or -jobs, run it
    /// too), else by $LOUPE_FUZZ_TARGET.
    static func takeTarget(from arguments: inout [String]) {
        var name = ProcessInfo.processInfo.environment["LOUPE_FUZZ_TARGET"]
        if let i = arguments.firstIndex(where: { $0 == "--target" || $0.hasPrefix("--target=") }) {
            if arguments[i] == "--target" {
                guard i + 1 < arguments.count else { usage("--target needs a name") }
                name = arguments[i + 1]
                arguments.removeSubrange(i...(i + 1))
            } else {
                name = String(arguments[i].dropFirst("--target=".count))
                arguments.remove(at: i)
            }
        }
        if let name {
            guard let chosen = Target(rawValue: name) else { usage("unknown target \(name)") }
            target = chosen
        }
        setenv("LOUPE_FUZZ_TARGET", target.rawValue, 1)
    }

    static func usage(_ problem: String) -> Never {
        let targets = Target.allCases.map(\.rawValue).joined(separator: ", ")
        print("loupe-fuzz: \(problem)\nusage: loupe-fuzz [--target \(targets)] FILE|DIRECTORY... (built with scripts/fuzz.sh it takes libFuzzer's flags)")
        exit(2)
    }

    static func frames(_ bytes: UnsafeRawBufferPointer) -> [[UInt8]] {
        var frames = [[UInt8]]()
        var start = 0
        var index = 0
        while index + separator.count <= bytes.count {
            if bytes[index] == separator[0], (1..<separator.count).allSatisfy({ bytes[index + $0] == separator[$0] }) {
                frames.append(Array(bytes[start..<index]))
                index += separator.count
                start = index
            } else {
                index += 1
            }
        }
        frames.append(Array(bytes[start...]))
        return frames
    }

    static func main() {
        var arguments = CommandLine.arguments
        takeTarget(from: &arguments)
        prepare()
        #if LOUPE_FUZZER
        // libFuzzer's own flags, without --target, as C strings that live as long as the process.
        var pointers = arguments.map { strdup($0) } + [nil]
        var argc = Int32(arguments.count)
        pointers.withUnsafeMutableBufferPointer { buffer in
            var argv = buffer.baseAddress!
            exit(LLVMFuzzerRunDriver(&argc, &argv, fuzzOne))
        }
        #else
        replay(Array(arguments.dropFirst()))
        #endif
    }

    /// Every file given, or every file in a directory given, once.
    static func replay(_ paths: [String]) {
        guard !paths.isEmpty else { usage("no input given") }
        var count = 0
        for path in paths {
            var isDirectory: ObjCBool = false
            _ = FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory)
            let files = isDirectory.boolValue
                ? ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted().map { path + "/" + $0 } : [path]
            for file in files {
                guard let data = FileManager.default.contents(atPath: file) else { continue }
                print("\(file): \(data.withUnsafeBytes { run($0) })")
                count += 1
            }
        }
        print("replayed \(count) inputs (\(target.rawValue))")
    }
}

#if LOUPE_FUZZER
/// libFuzzer's driver: parses its flags from the command line and calls back for every input.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<Int32>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> Int32) -> Int32

/// The entry libFuzzer's own `main` (linked in with the runtime) expects.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    Fuzz.run(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
#endif
