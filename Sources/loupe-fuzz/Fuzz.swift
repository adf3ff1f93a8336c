import Foundation
import GPT2
import Interventions
import LoupeDaemon
import LoupeModels
import LoupeTrace
import LoupeWire

/// The fuzz target over the daemon's request path, without sockets: each input is a
/// message's frames (the body, then attachments, separated by `Fuzz.separator`), decoded,
/// read and checked against the tiny GPT-2 fixture as the daemon does, and, when accepted,
/// a forward pass or trace run and its reply encoded. Any crash, hang or oversized
/// allocation is a bug; a typed error is the expected answer to garbage.
///
/// Built with libFuzzer (`scripts/fuzz.sh`: `-sanitize=fuzzer,address -DLOUPE_FUZZER`) it
/// is a libFuzzer binary taking libFuzzer's flags; built plainly (`swift build`) it replays
/// the files or directories it is given, which is how a crash is reproduced under a debugger.
@main
enum Fuzz {
    /// Four bytes MessagePack never uses as a type, between frames.
    static let separator: [UInt8] = [0xc1, 0xc1, 0xc1, 0xc1]

    /// The fixture model: $LOUPE_FUZZ_MODEL, else Tests/Fixtures/models/gpt2-tiny in this
    /// checkout. libFuzzer calls the target from one thread only.
    nonisolated(unsafe) static let check: RequestCheck = {
        let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let path = ProcessInfo.processInfo.environment["LOUPE_FUZZ_MODEL"]
            ?? repository.appendingPathComponent("Tests/Fixtures/models/gpt2-tiny").path
        let registry = ArchitectureRegistry()
        registry.register(GPT2Architecture.self)
        let interventions = InterventionRegistry()
        registerBuiltInInterventions(interventions)
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

    /// One input: any outcome but a crash is fine.
    static func run(_ bytes: UnsafeRawBufferPointer) {
        _ = check.check(frames(bytes), run: true)
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
        _ = check
        #if LOUPE_FUZZER
        var argc = CommandLine.argc
        var argv = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv, fuzzOne))
        #else
        replay(Array(CommandLine.arguments.dropFirst()))
        #endif
    }

    /// Every file given, or every file in a directory given, once.
    static func replay(_ paths: [String]) {
        guard !paths.isEmpty else {
            print("usage: loupe-fuzz FILE|DIRECTORY... (built with scripts/fuzz.sh it takes libFuzzer's flags)")
            exit(2)
        }
        var count = 0
        for path in paths {
            var isDirectory: ObjCBool = false
            _ = FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory)
            let files = isDirectory.boolValue
                ? ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted().map { path + "/" + $0 } : [path]
            for file in files {
                guard let data = FileManager.default.contents(atPath: file) else { continue }
                let message = data.withUnsafeBytes { Fuzz.frames($0) }
                let outcome = check.check(message, run: true)
                if case .failure(let error) = outcome { print("\(file): \(error.code.rawValue): \(error.message)") } else { print("\(file): ok") }
                count += 1
            }
        }
        print("replayed \(count) inputs")
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
