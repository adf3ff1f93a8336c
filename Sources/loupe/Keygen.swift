import ArgumentParser
import Foundation
import LoupeWire

/// `loupe keygen NAME`: a CURVE key pair for a daemon or a client.
struct Keygen: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make a CURVE key pair: NAME.key (secret, owner-only) and NAME.pub.",
        discussion: """
            A daemon on an endpoint other machines can reach needs its own pair \
            (loupe serve --curve-secret-key NAME.key) and an allow-list file with each client's \
            NAME.pub line (--allow-keys FILE, owner-only). A client passes the daemon's public key \
            and its own secret key: --curve-server-key and --curve-client-key, or \
            LOUPE_CURVE_SERVER_KEY and LOUPE_CURVE_CLIENT_KEY.
            """)

    @Argument(help: "Where to write: NAME.key and NAME.pub (neither may exist).") var name: String

    func run() throws {
        do {
            let pair = try CurveKeyPair.generate()
            try CurveKeyFile.write(pair, prefix: name)
            print("wrote \(name).key (secret) and \(name).pub; public key: \(pair.publicKey)")
        } catch {
            throw ValidationError("\(error)")
        }
    }
}
