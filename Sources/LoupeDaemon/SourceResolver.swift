import Foundation

/// Turns a model source as a client wrote it into the key two loads of the same weights
/// share: the standardized path of an existing file or directory, a file in the models
/// directory, or (an HF id) the source itself, which the loader resolves in the HF cache.
struct SourceResolver {
    let modelsDirectory: String

    func key(for source: String) -> String {
        let expanded = (source as NSString).expandingTildeInPath
        if FileManager.default.fileExists(atPath: expanded) {
            return URL(fileURLWithPath: expanded).standardizedFileURL.resolvingSymlinksInPath().path
        }
        let inModels = modelsDirectory + "/" + source
        if !source.contains("/"), FileManager.default.fileExists(atPath: inModels) {
            return URL(fileURLWithPath: inModels).standardizedFileURL.resolvingSymlinksInPath().path
        }
        return source
    }
}
