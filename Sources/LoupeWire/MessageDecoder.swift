import CMsgPack

/// Decodes one MessagePack value with msgpack-c, after `MessageScanner` has checked the
/// bytes against the limits.
public enum MessageDecoder {
    public static func decode(_ bytes: [UInt8], limits: DecodeLimits = .standard) throws(WireError) -> MessageValue {
        do {
            return try bytes.withUnsafeBytes { buffer in try decode(buffer, limits: limits) }
        } catch let error as WireError {
            throw error
        } catch {
            throw WireError(.malformed, "\(error)")
        }
    }

    public static func decode(_ buffer: UnsafeRawBufferPointer, limits: DecodeLimits = .standard) throws(WireError) -> MessageValue {
        try MessageScanner.check(buffer, limits: limits)
        guard let base = buffer.baseAddress?.assumingMemoryBound(to: CChar.self) else {
            throw WireError(.truncated, "empty message")
        }
        var unpacked = msgpack_unpacked()
        msgpack_unpacked_init(&unpacked)
        defer { msgpack_unpacked_destroy(&unpacked) }
        var offset = 0
        let result = msgpack_unpack_next(&unpacked, base, buffer.count, &offset)
        switch result {
        case MSGPACK_UNPACK_SUCCESS: break
        case MSGPACK_UNPACK_CONTINUE: throw WireError(.truncated, "message ends inside a value")
        case MSGPACK_UNPACK_NOMEM_ERROR: throw WireError(.tooLarge, "message too large to decode")
        default: throw WireError(.malformed, "not a MessagePack value")
        }
        return try convert(unpacked.data)
    }

    /// msgpack-c's object tree to a `MessageValue`; depth is bounded by the scanner's check.
    private static func convert(_ object: msgpack_object) throws(WireError) -> MessageValue {
        switch object.type {
        case MSGPACK_OBJECT_NIL: return .null
        case MSGPACK_OBJECT_BOOLEAN: return .bool(object.via.boolean)
        case MSGPACK_OBJECT_POSITIVE_INTEGER:
            let value = object.via.u64
            return value <= UInt64(Int64.max) ? .int(Int64(value)) : .uint(value)
        case MSGPACK_OBJECT_NEGATIVE_INTEGER: return .int(object.via.i64)
        case MSGPACK_OBJECT_FLOAT32, MSGPACK_OBJECT_FLOAT64: return .double(object.via.f64)
        case MSGPACK_OBJECT_STR: return .string(try string(object.via.str))
        case MSGPACK_OBJECT_BIN:
            let bin = object.via.bin
            return .binary(bytes(bin.ptr, Int(bin.size)))
        case MSGPACK_OBJECT_EXT:
            let ext = object.via.ext
            return .ext(ext.type, bytes(ext.ptr, Int(ext.size)))
        case MSGPACK_OBJECT_ARRAY:
            let array = object.via.array
            var items = [MessageValue]()
            items.reserveCapacity(Int(array.size))
            for index in 0..<Int(array.size) { items.append(try convert(array.ptr[index])) }
            return .array(items)
        case MSGPACK_OBJECT_MAP:
            let map = object.via.map
            var fields = [String: MessageValue](minimumCapacity: Int(map.size))
            for index in 0..<Int(map.size) {
                let pair = map.ptr[index]
                guard pair.key.type == MSGPACK_OBJECT_STR else {
                    throw WireError(.badKey, "map key is not a string")
                }
                let key = try string(pair.key.via.str)
                guard fields[key] == nil else { throw WireError(.badKey, "map key '\(key)' appears twice") }
                fields[key] = try convert(pair.val)
            }
            return .map(fields)
        default:
            throw WireError(.malformed, "unknown msgpack-c object type \(object.type.rawValue)")
        }
    }

    private static func string(_ str: msgpack_object_str) throws(WireError) -> String {
        let raw = UnsafeRawBufferPointer(start: str.ptr, count: Int(str.size))
        guard let text = String(validating: raw, as: UTF8.self) else {
            throw WireError(.badUTF8, "a string is not valid UTF-8")
        }
        return text
    }

    private static func bytes(_ pointer: UnsafePointer<CChar>?, _ count: Int) -> [UInt8] {
        guard let pointer, count > 0 else { return [] }
        return Array(UnsafeRawBufferPointer(start: pointer, count: count))
    }
}
