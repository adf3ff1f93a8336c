import LoupeTokenizers
import LoupeWire

/// `tokenize` and `detokenize`: quick, so answered on the socket thread.
extension ServerLoop {
    func tokenizer(of instance: WarmModel, _ request: Request) throws(ProtocolError) -> Tokenizer {
        guard let tokenizer = instance.loaded.tokenizer else {
            throw ProtocolError(.badRequest, "model '\((try? request.string("model")) ?? "")' has no tokenizer; send token ids instead", field: "model")
        }
        return tokenizer
    }

    func tokenize(_ request: Request) throws(ProtocolError) -> [String: MessageValue] {
        let instance = try warmModel(request)
        let tokenizer = try tokenizer(of: instance, request)
        let ids = tokenizer.encode(try request.string("text"))
        return ["tokens": MessageValue(ids), "pieces": .array(ids.map { tokenizer.tokenString($0).map(MessageValue.string) ?? .null })]
    }

    func detokenize(_ request: Request) throws(ProtocolError) -> [String: MessageValue] {
        let instance = try warmModel(request)
        let tokenizer = try tokenizer(of: instance, request)
        let ids = try request.integerArray("tokens")
        if let index = ids.firstIndex(where: { $0 < 0 || $0 >= tokenizer.vocabularySize }) {
            throw ProtocolError(.indexOutOfRange, "token id \(ids[index]) is outside the vocabulary of \(tokenizer.vocabularySize)", field: "tokens.\(index)")
        }
        return ["text": .string(tokenizer.decode(ids))]
    }
}
