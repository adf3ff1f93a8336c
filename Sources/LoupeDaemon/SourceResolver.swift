import Foundation
import LoupeFormats
import LoupeWire

/// Turns a model source as a client wrote it into the key two loads of the same weights
/// share (the real path of an existing file or directory, a file in the models directory,
/// or an HF id, which the loader resolves in the HF cache), and keeps model loading below
/// the model roots: every path is checked after its symlinks and `..` are resolved, a
/// directory's files too, so neither a path nor a link inside a model directory reaches
/// anything else on the machine.
struct SourceResolver {
    let modelsDirectory: String
    /// The allowed directories, themselves resolved.
    let roots: [String]

    /// `roots` empty: the HF cache, Loupe's own model directory and the models directory.
    init(modelsDirectory: String, roots: [String]) {
        self.modelsDirectory = modelsDirectory
        let chosen = roots.isEmpty ? [HFCache.hubDirectory(), DaemonConfiguration.loupeModelsDirectory, modelsDirectory] : roots
        self.roots = chosen.map { Self.realPath(($0 as NSString).expandingTildeInPath) }
    }

    func key(for source: String) throws(ProtocolError) -> String {
        let expanded = (source as NSString).expandingTildeInPath
        let inModels = modelsDirectory + "/" + source
        if FileManager.default.fileExists(atPath: expanded) {
            return try allowed(expanded, source: source)
        }
        if !source.contains("/"), FileManager.default.fileExists(atPath: inModels) {
            return try allowed(inModels, source: source)
        }
        if Self.looksLikePath(source) {
            // Refused before it is found missing: what exists outside the roots is no one's business.
            _ = try allowed(expanded, source: source)
            return source
        }
        // An HF id: the snapshot the loader will read must be below a root too.
        if let snapshot = try? HFCache.snapshotDirectory(forModelID: source) {
            _ = try allowed(snapshot, source: source)
        }
        return source
    }

    /// The real path, when it and (for a directory) every file in it lie below a root.
    private func allowed(_ path: String, source: String) throws(ProtocolError) -> String {
        let real = Self.realPath(path)
        guard isBelowRoot(real) else {
            throw ProtocolError(.badRequest, "'\(source)' is outside the model roots (\(roots.joined(separator: ", "))); loupe serve --model-root allows another directory", field: "source")
        }
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: real, isDirectory: &isDirectory), isDirectory.boolValue {
            for entry in (try? FileManager.default.contentsOfDirectory(atPath: real)) ?? [] {
                guard isBelowRoot(Self.realPath(real + "/" + entry)) else {
                    throw ProtocolError(.badRequest, "'\(source)' holds '\(entry)', a link to outside the model roots (\(roots.joined(separator: ", ")))", field: "source")
                }
            }
        }
        return real
    }

    private func isBelowRoot(_ real: String) -> Bool {
        roots.contains { root in root == "/" || real == root || real.hasPrefix(root + "/") }
    }

    /// A source written as a path rather than an HF id (`org/name`).
    private static func looksLikePath(_ source: String) -> Bool {
        let parts = source.split(separator: "/", omittingEmptySubsequences: false)
        return source.hasPrefix("/") || source.hasPrefix("~") || source.hasPrefix(".") || parts.count > 2
            || parts.contains { $0 == ".." || $0 == "." || $0.isEmpty }
    }

    /// The path with every symlink and `..` resolved, as far as it exists; the part that does
    /// not exist is appended as written, its `..` taken lexically.
    static func realPath(_ path: String) -> String {
        let absolute = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        var current = "/"
        var exists = true
        for component in absolute.split(separator: "/") {
            switch component {
            case ".": continue
            case "..": current = (current as NSString).deletingLastPathComponent
            default:
                let candidate = current == "/" ? "/" + component : current + "/" + component
                if exists, let resolved = realpath(candidate, nil) {
                    current = String(cString: resolved)
                    free(resolved)
                } else {
                    exists = false
                    current = candidate
                }
            }
        }
        return current
    }
}
