import Foundation

/// Resolves an HF model id ("openai-community/gpt2") to a snapshot directory in the local HF cache, with no network:
/// $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub; models--ORG--NAME/snapshots/<rev>; prefer the revision
/// named by refs/main, else the newest snapshot. FormatError(.notFound) listing the places looked at.
public enum HFCache {
    public static func snapshotDirectory(
        forModelID id: String, environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws -> String {
        let hub = hubDirectory(environment)
        let parts = id.split(separator: "/", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count), parts.allSatisfy({ !$0.isEmpty && $0 != "." && $0 != ".." }) else {
            throw FormatError(.notFound, file: hub, item: id, "not a model id of the form ORG/NAME")
        }
        let repo = "\(hub)/models--\(parts.joined(separator: "--"))"
        let snapshots = "\(repo)/snapshots"
        let fm = FileManager.default

        let refMain = "\(repo)/refs/main"
        if let ref = try? String(contentsOfFile: refMain, encoding: .utf8) {
            let revision = ref.trimmingCharacters(in: .whitespacesAndNewlines)
            let directory = "\(snapshots)/\(revision)"
            if !revision.isEmpty, !revision.contains("/"), isDirectory(directory) { return directory }
        }

        // No usable refs/main: the most recently written snapshot is the likeliest to be complete.
        let revisions = (try? fm.contentsOfDirectory(atPath: snapshots)) ?? []
        let newest = revisions
            .map { "\(snapshots)/\($0)" }
            .filter(isDirectory)
            .max { modificationDate($0) < modificationDate($1) }
        if let newest { return newest }

        throw FormatError(.notFound, file: hub, item: id,
                          "no snapshot of \(id) in the local HF cache; looked at \(refMain) and \(snapshots)/* "
                          + "(set HF_HUB_CACHE or HF_HOME to use another cache)")
    }

    /// The hub cache directory, chosen as huggingface_hub does.
    public static func hubDirectory(_ environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let hub = environment["HF_HUB_CACHE"], !hub.isEmpty { return hub }
        if let home = environment["HF_HOME"], !home.isEmpty { return "\(home)/hub" }
        if let cache = environment["XDG_CACHE_HOME"], !cache.isEmpty { return "\(cache)/huggingface/hub" }
        let home = environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory()
        return "\(home)/.cache/huggingface/hub"
    }

    private static func isDirectory(_ path: String) -> Bool {
        var directory: ObjCBool = false
        return FileManager.default.fileExists(atPath: path, isDirectory: &directory) && directory.boolValue
    }

    private static func modificationDate(_ path: String) -> Date {
        let attributes = try? FileManager.default.attributesOfItem(atPath: path)
        return attributes?[.modificationDate] as? Date ?? .distantPast
    }
}
