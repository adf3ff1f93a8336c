import CMsgPack

/// Encodes a `MessageValue` as MessagePack with msgpack-c's packer.
///
/// Map keys are written in sorted order, so a value has exactly one encoding: golden
/// vectors compare byte for byte and a decoded message re-encodes to the same bytes.
public enum MessageEncoder {
    public static func encode(_ value: MessageValue) -> [UInt8] {
        let sink = ByteSink()
        var packer = msgpack_packer()
        msgpack_packer_init(&packer, Unmanaged.passUnretained(sink).toOpaque()) { data, bytes, length in
            guard let data, let bytes else { return length == 0 ? 0 : -1 }
            let sink = Unmanaged<ByteSink>.fromOpaque(data).takeUnretainedValue()
            sink.bytes.append(contentsOf: UnsafeRawBufferPointer(start: bytes, count: length))
            return 0
        }
        withExtendedLifetime(sink) { pack(value, into: &packer) }
        return sink.bytes
    }

    private static func pack(_ value: MessageValue, into packer: inout msgpack_packer) {
        switch value {
        case .null: msgpack_pack_nil(&packer)
        case .bool(let flag): _ = flag ? msgpack_pack_true(&packer) : msgpack_pack_false(&packer)
        case .int(let number): msgpack_pack_int64(&packer, number)
        case .uint(let number): msgpack_pack_uint64(&packer, number)
        case .double(let number): msgpack_pack_double(&packer, number)
        case .string(let text): packString(text, into: &packer)
        case .binary(let bytes):
            msgpack_pack_bin(&packer, bytes.count)
            bytes.withUnsafeBytes { _ = msgpack_pack_bin_body(&packer, $0.baseAddress, $0.count) }
        case .array(let items):
            msgpack_pack_array(&packer, items.count)
            for item in items { pack(item, into: &packer) }
        case .map(let fields):
            msgpack_pack_map(&packer, fields.count)
            for key in fields.keys.sorted() {
                packString(key, into: &packer)
                pack(fields[key]!, into: &packer)
            }
        case .ext(let type, let bytes):
            msgpack_pack_ext(&packer, bytes.count, type)
            bytes.withUnsafeBytes { _ = msgpack_pack_ext_body(&packer, $0.baseAddress, $0.count) }
        }
    }

    private static func packString(_ text: String, into packer: inout msgpack_packer) {
        var text = text
        text.withUTF8 { utf8 in
            msgpack_pack_str(&packer, utf8.count)
            _ = msgpack_pack_str_body(&packer, utf8.baseAddress, utf8.count)
        }
    }
}

/// Where the packer's callback appends; a class so the C callback can reach it by pointer.
private final class ByteSink {
    var bytes: [UInt8] = []
    init() { bytes.reserveCapacity(256) }
}
