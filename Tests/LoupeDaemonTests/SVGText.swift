import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif

/// An SVG file read as XML (parsing fails on anything that is not well-formed): the text of
/// its `<text>` elements and the number of heatmap cells.
struct SVGText {
    let texts: [String]
    let cells: Int

    struct NotXML: Error, CustomStringConvertible {
        let description: String
    }

    init(path: String) throws {
        let parser = XMLParser(data: try Data(contentsOf: URL(fileURLWithPath: path)))
        let collector = Collector()
        parser.delegate = collector
        guard parser.parse(), collector.root == "svg" else {
            throw NotXML(description: "\(path) is not a well-formed SVG: \(parser.parserError.map { "\($0)" } ?? "root \(collector.root ?? "none")")")
        }
        texts = collector.texts
        cells = collector.cells
    }

    private final class Collector: NSObject, XMLParserDelegate {
        var root: String?
        var texts: [String] = []
        var cells = 0
        private var inText = false
        private var inCells = false
        private var current = ""

        func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?,
                    attributes: [String: String] = [:]) {
            if root == nil { root = name }
            if name == "g" && attributes["class"] == "cells" { inCells = true }
            if name == "rect" && inCells { cells += 1 }
            if name == "text" { inText = true; current = "" }
        }

        func parser(_ parser: XMLParser, foundCharacters string: String) {
            if inText { current += string }
        }

        func parser(_ parser: XMLParser, didEndElement name: String, namespaceURI: String?, qualifiedName: String?) {
            if name == "text" { inText = false; texts.append(current) }
            if name == "g" { inCells = false }
        }
    }
}
