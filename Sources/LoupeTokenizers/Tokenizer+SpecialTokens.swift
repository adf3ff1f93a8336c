extension Tokenizer {
    /// The ids of `text` without the special tokens `encode` adds, i.e. without the BOS of a
    /// tokenizer that `addsBOS` (Gemma's): HF's `encode(text, add_special_tokens=False)`.
    /// A lone answer token is tokenized this way: " John" is [3415] in Gemma 3's tokenizer,
    /// where `encode` gives [2, 3415].
    public func encodeWithoutSpecialTokens(_ text: String) -> [Int] {
        let ids = encode(text)
        // `encode` puts exactly one BOS first when it adds one; a "<bos>" written in the text
        // itself stays.
        return addsBOS && bosTokenID != nil ? Array(ids.dropFirst()) : ids
    }
}
