/// The steps of HF's decoders, which turn the token strings of some ids back into text. Each
/// step maps the list of strings to another, as HF's `decode_chain` does; the last list is joined.
enum DecoderStep: Sendable, Equatable {
    /// Tokens spelled in GPT-2's byte alphabet become their bytes, others their own UTF-8; all
    /// of it is one string, invalid UTF-8 replaced as `String::from_utf8_lossy` does.
    case byteLevel
    /// Every occurrence of a literal in each token ("▁" -> " ").
    case replace(String, String)
    /// Runs of `<0xNN>` tokens become the text their bytes spell, or one U+FFFD per byte when
    /// they are not valid UTF-8.
    case byteFallback
    /// All tokens joined into one.
    case fuse
    /// Up to `start` leading and `stop` trailing `content` characters cut from each token.
    case strip(content: Unicode.Scalar, start: Int, stop: Int)
    /// HF's Metaspace decoder: the replacement character becomes a space, except in the first
    /// token when a prefix was prepended, where it is dropped.
    case metaspace(replacement: Unicode.Scalar, dropsInFirst: Bool)

    static func apply(_ steps: [DecoderStep], to tokens: [String]) -> String {
        steps.reduce(tokens) { tokens, step in step.apply(to: tokens) }.joined()
    }

    func apply(to tokens: [String]) -> [String] {
        switch self {
        case .byteLevel:
            var bytes: [UInt8] = []
            for token in tokens { bytes += ByteLevel.decode(token) ?? Array(token.utf8) }
            return [String(decoding: bytes, as: UTF8.self)]
        case .replace(let pattern, let content):
            return tokens.map { NormalizerStep.replacing(pattern, with: content, in: $0) }
        case .byteFallback:
            var out: [String] = []
            var bytes: [UInt8] = []
            func flush() {
                guard !bytes.isEmpty else { return }
                if let text = String(validating: bytes, as: UTF8.self) {
                    out.append(text)
                } else {
                    out += repeatElement("\u{FFFD}", count: bytes.count)
                }
                bytes.removeAll()
            }
            for token in tokens {
                if let byte = ByteFallback.byte(token) {
                    bytes.append(byte)
                } else {
                    flush()
                    out.append(token)
                }
            }
            flush()
            return out
        case .fuse:
            return [tokens.joined()]
        case .strip(let content, let start, let stop):
            return tokens.map { token in
                let scalars = Array(token.unicodeScalars)
                let head = scalars.prefix(start).prefix { $0 == content }.count
                let tail = scalars[head...].reversed().prefix(stop).prefix { $0 == content }.count
                return String(String.UnicodeScalarView(scalars[head..<(scalars.count - tail)]))
            }
        case .metaspace(let replacement, let dropsInFirst):
            return tokens.enumerated().map { i, token in
                var out = String.UnicodeScalarView()
                for scalar in token.unicodeScalars {
                    if scalar != replacement {
                        out.append(scalar)
                    } else if !(i == 0 && dropsInFirst) {
                        out.append(" ")
                    }
                }
                return String(out)
            }
        }
    }
}

/// The `<0xNN>` tokens that spell single bytes in a SentencePiece vocabulary.
enum ByteFallback {
    /// The token HF's BPE looks up for `byte` (`format!("<{b:#04X}>")`: "<0x0A>").
    static func token(_ byte: Int) -> String {
        let digits = Array("0123456789ABCDEF")
        return "<0x\(digits[byte >> 4])\(digits[byte & 15])>"
    }

    /// The byte a token stands for in HF's ByteFallback decoder: six bytes, `<0x`, two that
    /// Rust's `u8::from_str_radix(_, 16)` reads (hex digits of either case, or `+` and one), `>`.
    static func byte(_ token: String) -> UInt8? {
        let utf8 = Array(token.utf8)
        guard utf8.count == 6, utf8.starts(with: "<0x".utf8), utf8[5] == UInt8(ascii: ">"),
              utf8[3] != UInt8(ascii: "-") else { return nil }
        return UInt8(String(decoding: utf8[3..<5], as: UTF8.self), radix: 16)
    }
}
