/// Walks MessagePack bytes without building anything, checking structure and limits.
///
/// msgpack-c trusts the lengths it reads: a five-byte array header claiming four billion
/// elements makes it allocate for four billion. The scanner runs first and rejects any
/// container claiming more elements than bytes remain, so what msgpack-c then allocates is
/// bounded by the input's real size. It uses an explicit stack, so deep nesting cannot
/// overflow the thread's stack either.
enum MessageScanner {
    static func check(_ bytes: UnsafeRawBufferPointer, limits: DecodeLimits) throws(WireError) {
        guard bytes.count <= limits.maxBytes else {
            throw WireError(.tooLarge, "message of \(bytes.count) bytes exceeds the limit of \(limits.maxBytes)")
        }
        var position = 0
        var values = 0
        // Elements still to read in each open container; the bottom entry is the top-level value.
        var pending = [1]

        func need(_ count: Int) throws(WireError) {
            guard count <= bytes.count - position else {
                throw WireError(.truncated, "message ends inside a value at byte \(position) of \(bytes.count)")
            }
        }
        func readLength(_ width: Int) throws(WireError) -> Int {
            try need(width)
            var length = 0
            for index in 0..<width { length = length << 8 | Int(bytes[position + index]) }
            position += width
            return length
        }

        while let last = pending.last {
            if last == 0 {
                pending.removeLast()
                continue
            }
            pending[pending.count - 1] -= 1
            try need(1)
            let marker = bytes[position]
            position += 1
            values += 1
            guard values <= limits.maxValues else {
                throw WireError(.tooLarge, "message holds more than \(limits.maxValues) values")
            }

            var payload = 0          // bytes to skip after the header
            var elements: Int? = nil // set for containers: values they hold
            var stringBytes: Int? = nil
            var binaryBytes: Int? = nil
            switch marker {
            case 0x00...0x7f, 0xe0...0xff, 0xc0, 0xc2, 0xc3: break
            case 0x80...0x8f: elements = Int(marker & 0x0f) * 2
            case 0x90...0x9f: elements = Int(marker & 0x0f)
            case 0xa0...0xbf: stringBytes = Int(marker & 0x1f)
            case 0xc4, 0xc5, 0xc6: binaryBytes = try readLength(1 << Int(marker - 0xc4))
            case 0xc7, 0xc8, 0xc9: binaryBytes = try readLength(1 << Int(marker - 0xc7)) + 1 // + ext type
            case 0xca: payload = 4
            case 0xcb: payload = 8
            case 0xcc...0xcf: payload = 1 << Int(marker - 0xcc)
            case 0xd0...0xd3: payload = 1 << Int(marker - 0xd0)
            case 0xd4...0xd8: payload = 1 + (1 << Int(marker - 0xd4)) // fixext: type + data
            case 0xd9, 0xda, 0xdb: stringBytes = try readLength(1 << Int(marker - 0xd9))
            case 0xdc, 0xdd: elements = try readLength(2 << Int(marker - 0xdc))
            case 0xde, 0xdf: elements = try readLength(2 << Int(marker - 0xde)) * 2
            default: // 0xc1 is never used
                throw WireError(.malformed, "byte 0x\(String(marker, radix: 16)) at \(position - 1) is not a MessagePack type")
            }

            if let count = stringBytes {
                guard count <= limits.maxStringBytes else {
                    throw WireError(.tooLarge, "string of \(count) bytes exceeds the limit of \(limits.maxStringBytes)")
                }
                payload = count
            }
            if let count = binaryBytes {
                guard count <= limits.maxBinaryBytes else {
                    throw WireError(.tooLarge, "binary of \(count) bytes exceeds the limit of \(limits.maxBinaryBytes)")
                }
                payload = count
            }
            try need(payload)
            position += payload

            if let count = elements {
                // Every element takes at least one byte: a claim beyond the bytes left is false.
                guard count <= bytes.count - position else {
                    throw WireError(.truncated, "container at byte \(position) claims \(count) values but only \(bytes.count - position) bytes remain")
                }
                guard pending.count <= limits.maxDepth else {
                    throw WireError(.tooLarge, "message nests deeper than \(limits.maxDepth) levels")
                }
                pending.append(count)
            }
        }
        guard position == bytes.count else {
            throw WireError(.trailingBytes, "\(bytes.count - position) bytes follow the message")
        }
    }
}
