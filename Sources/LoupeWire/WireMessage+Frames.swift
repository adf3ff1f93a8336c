extension WireMessage {
    /// The same message with every tensor's inline data moved to an attachment frame and
    /// replaced by `{frame: N}`, for clients that asked for `frames: true` (the bytes then
    /// reach them without MessagePack around them).
    public func withTensorDataInFrames() -> WireMessage {
        var attachments = self.attachments
        let body = Self.moveTensorData(self.body, into: &attachments)
        return WireMessage(body, attachments: attachments)
    }

    private static func moveTensorData(_ value: MessageValue, into attachments: inout [[UInt8]]) -> MessageValue {
        switch value {
        case .map(var fields):
            if fields["dtype"]?.stringValue != nil, fields["shape"]?.arrayValue != nil, case .binary(let bytes)? = fields["data"] {
                attachments.append(bytes)
                fields["data"] = ["frame": .int(Int64(attachments.count))]
                return .map(fields)
            }
            return .map(fields.mapValues { moveTensorData($0, into: &attachments) })
        case .array(let items):
            return .array(items.map { moveTensorData($0, into: &attachments) })
        default:
            return value
        }
    }
}
