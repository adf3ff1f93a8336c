import Foundation
import LoupeModels

/// The `sites` and `module-tree` checks: what the forward pass shows the hooks against
/// what the model declares.
enum SiteChecks {
    /// Every declared canonical site fires in every block with its documented shape, no
    /// undeclared one fires, and a block's sites fire in the order sweeps and traces rely on.
    static func canonical(_ c: inout CheckContext) throws {
        let sites = try c.sites()
        let model = c.model, d = model.dimensions
        var index = [Site: Int]()
        for (i, info) in sites.enumerated() where index[Site(info.site, info.io)] == nil { index[Site(info.site, info.io)] = i }
        let declared = model.canonicalSites

        // Declared: fires everywhere, with its documented shape.
        var missing = [String]()
        for kind in CanonicalSite.Kind.allCases where declared.contains(kind) {
            let expected = kind.shape(d)
            let layers: [Int?] = kind == .logits ? [nil] : (0..<d.layers).map { $0 }
            for layer in layers {
                let site = layer.map { CanonicalSite(kind, layer: $0) } ?? .logits
                guard let i = index[site.site] else {
                    missing.append(site.path)
                    continue
                }
                let shape = sites[i].shape
                if shape != expected {
                    c.fail("\(site.path) fires with shape \(symbolic(shape)); \(kind.rawValue) is documented as \(kind.shape) = \(symbolic(expected))")
                }
            }
        }
        if !missing.isEmpty {
            c.fail("declared but never fired: \(missing.joined(separator: ", ")) (the model declares \(declared.count) canonical kinds; a declared site fires in every block)")
        }

        // Undeclared or out of range: a canonical name the model does not stand behind.
        for info in sites {
            guard let site = CanonicalSite(Site(info.site, info.io)) else {
                if info.site.hasPrefix("blocks.") || info.site == CanonicalSite.Kind.logits.rawValue {
                    c.fail("\(info.site).\(info.io.rawValue) looks canonical but is not one: canonical sites are outputs named blocks.L.<kind> or logits")
                }
                continue
            }
            if !declared.contains(site.kind) {
                c.fail("\(site.path) fires, but the model does not declare \(site.kind.rawValue) in canonicalSites")
            }
            if let layer = site.layer, layer >= d.layers {
                c.fail("\(site.path) fires, but the model has \(d.layers) layers")
            }
        }

        // Order: within block L, resid_pre first and resid_post last; block L before block L + 1; logits after every block.
        for layer in 0..<d.layers {
            let ofLayer = CanonicalSite.Kind.perLayer.filter(declared.contains).compactMap { kind in
                index[CanonicalSite(kind, layer: layer).site].map { (kind, $0) }
            }
            if let pre = index[CanonicalSite.residPre(layer).site], let early = ofLayer.first(where: { $0.1 < pre }) {
                c.fail("blocks.\(layer).\(early.0.rawValue) fires before blocks.\(layer).resid_pre: the residual stream enters a block first")
            }
            if let post = index[CanonicalSite.residPost(layer).site], let late = ofLayer.first(where: { $0.1 > post }) {
                c.fail("blocks.\(layer).\(late.0.rawValue) fires after blocks.\(layer).resid_post: the residual stream leaves a block last")
            }
            if layer + 1 < d.layers, let post = index[CanonicalSite.residPost(layer).site],
               let next = index[CanonicalSite.residPre(layer + 1).site], next < post {
                c.fail("blocks.\(layer + 1).resid_pre fires before blocks.\(layer).resid_post")
            }
        }
        if let logits = index[CanonicalSite.logits.site], let last = sites.lastIndex(where: { CanonicalSite(Site($0.site, $0.io))?.layer != nil }),
           last > logits {
            c.fail("logits fires before \(sites[last].site)")
        }
        c.note("\(declared.count) canonical kinds declared: " + CanonicalSite.Kind.allCases.filter(declared.contains).map(\.rawValue).joined(separator: ", "))
    }

    /// The module tree and the sites agree, as nnsight's `.input` / `.output` reach every
    /// module HF calls.
    ///
    /// - Every module has an `.output` site, but a `ModuleList` / `ModuleDict` (a container
    ///   HF never calls: nnsight cannot read its output either).
    /// - Every such module has an `.input` site, but an `Embedding` and a module holding one
    ///   (the base model): their input is token ids, which no site holds.
    /// - Every site that is not canonical is a module's.
    /// - A `Linear` shows `in_features` wide inputs and `out_features` wide outputs, an
    ///   `Embedding(count, width)` width-wide outputs, a norm printed `((width,), ...)`
    ///   width-wide values on both sides.
    static func moduleTree(_ c: inout CheckContext) throws {
        let sites = try c.sites()
        let tree = c.model.moduleTree
        var nodes = [String: ModuleNode]()
        func collect(_ node: ModuleNode) {
            if !node.path.isEmpty { nodes[node.path] = node }
            node.children.forEach(collect)
        }
        collect(tree)
        var info = [Site: SiteInfo]()
        for site in sites { info[Site(site.site, site.io)] = info[Site(site.site, site.io)] ?? site }

        for path in tree.allPaths {
            let node = nodes[path]!
            if ["ModuleList", "ModuleDict"].contains(node.type) { continue }
            guard node.hasSites else {
                // Declared without sites: then none may fire.
                if info[Site(path, .output)] != nil || info[Site(path, .input)] != nil {
                    c.fail("module \(path) (\(node.type)) is declared without sites but shows a hook its values")
                }
                continue
            }
            let tokenInput = isEmbedding(node) || holdsEmbedding(node)
            var lacking = [String]()
            if info[Site(path, .output)] == nil { lacking.append(".output") }
            if !tokenInput, info[Site(path, .input)] == nil { lacking.append(".input") }
            if !lacking.isEmpty {
                c.fail("module \(path) (\(node.type)) has no \(lacking.joined(separator: " or ")) site: nnsight reaches \(lacking.count == 2 ? "both" : "it") on every module HF calls")
            }
            // Widths the module prints.
            for (io, width) in widths(node) {
                if let seen = info[Site(path, io)], seen.shape.last != width {
                    c.fail("\(path).\(io.rawValue) has shape \(symbolic(seen.shape)), but \(node.type)(\(node.extra)) means a last dimension of \(width)")
                }
            }
        }
        for site in sites where CanonicalSite(Site(site.site, site.io)) == nil && nodes[site.site] == nil {
            c.fail("site \(site.site).\(site.io.rawValue) is neither canonical nor a module of the tree")
        }
        c.note("\(nodes.count) modules, \(sites.count) sites")
    }

    private static func holdsEmbedding(_ node: ModuleNode) -> Bool {
        node.children.contains { isEmbedding($0) || holdsEmbedding($0) }
    }

    /// An `nn.Embedding` or a subclass (Gemma's `Gemma3TextScaledWordEmbedding`): it reads
    /// ids, so nnsight shows no input. A rotary embedding is declared without sites.
    private static func isEmbedding(_ node: ModuleNode) -> Bool {
        node.type.hasSuffix("Embedding") && node.hasSites
    }

    /// The last dimension of a module's input and output that what PyTorch prints for it implies.
    private static func widths(_ node: ModuleNode) -> [(SiteIO, Int)] {
        func number(after key: String) -> Int? {
            guard let range = node.extra.range(of: key + "=") else { return nil }
            return Int(node.extra[range.upperBound...].prefix { $0.isNumber })
        }
        if node.type == "Linear", let inputs = number(after: "in_features"), let outputs = number(after: "out_features") {
            return [(.input, inputs), (.output, outputs)]
        }
        // An embedding prints "count, width" and maybe ", padding_idx=0".
        if isEmbedding(node), let width = node.extra.split(separator: ",").dropFirst().first.flatMap({ Int($0.trimmingCharacters(in: .whitespaces)) }) {
            return [(.output, width)]
        }
        // A norm prints its normalized shape first: "(64,), eps=1e-05".
        if node.extra.hasPrefix("("), let width = Int(node.extra.dropFirst().prefix { $0.isNumber }),
           node.extra.dropFirst().drop(while: { $0.isNumber }).hasPrefix(",)") {
            return [(.input, width), (.output, width)]
        }
        return []
    }
}

/// A symbolic shape with its dims named: [batch, pos, 64].
func symbolic(_ shape: [Int]) -> String {
    "[" + shape.map { $0 == SiteInfo.batchDim ? "batch" : $0 == SiteInfo.sequenceDim ? "pos" : String($0) }.joined(separator: ", ") + "]"
}
