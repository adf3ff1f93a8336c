/// GPT-2's byte-level alphabet: every byte is spelled as one printable character, so that
/// a vocabulary of strings can hold arbitrary bytes ("Ġ" is the space byte 0x20).
enum ByteLevel {
    /// The character that spells each byte (GPT-2's `bytes_to_unicode`): printable Latin-1
    /// bytes spell themselves, the other 68 are moved to U+0100... in byte order.
    static let characters: [Unicode.Scalar] = {
        var table = [Unicode.Scalar](repeating: "\0", count: 256)
        var next: UInt32 = 256
        for byte in 0..<256 {
            let printable = (0x21...0x7E).contains(byte) || (0xA1...0xAC).contains(byte) || (0xAE...0xFF).contains(byte)
            if printable {
                table[byte] = Unicode.Scalar(UInt32(byte))!
            } else {
                table[byte] = Unicode.Scalar(next)!
                next += 1
            }
        }
        return table
    }()

    /// The byte each alphabet character spells, indexed by scalar value (-1: not in the alphabet).
    static let bytes: [Int16] = {
        var table = [Int16](repeating: -1, count: 256 + 68)
        for (byte, character) in characters.enumerated() { table[Int(character.value)] = Int16(byte) }
        return table
    }()

    /// The bytes a token spelled in the alphabet stands for; nil if it has another character.
    static func decode(_ token: String) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(token.unicodeScalars.count)
        for scalar in token.unicodeScalars {
            let value = Int(scalar.value)
            guard value < bytes.count, bytes[value] >= 0 else { return nil }
            out.append(UInt8(bytes[value]))
        }
        return out
    }

    /// The token string that spells `bytes`.
    static func encode<Bytes: Sequence<UInt8>>(_ bytes: Bytes) -> String {
        var out = String.UnicodeScalarView()
        for byte in bytes { out.append(characters[Int(byte)]) }
        return String(out)
    }
}
