import Foundation

/// A labelled matrix drawn as plotly's `px.imshow(..., color_continuous_scale="RdBu",
/// color_continuous_midpoint=0.0)` draws it: row 0 at the top, a red-white-blue diverging
/// scale whose range is symmetric about 0 (negative red, positive blue). Renders to the
/// terminal, to a self-contained SVG, and to an HTML page that embeds the SVG (no script, no
/// network).
struct Heatmap {
    var title: String
    var rowLabels: [String]
    var columnLabels: [String]
    var values: [[Double]]
    var rowAxis = "Layer"
    var columnAxis = "Position"
    var colorAxis = "Norm. Logit Diff"

    /// The colour range is [-extent, extent]: the midpoint 0 in the middle, as plotly sets it.
    var extent: Double {
        let largest = values.joined().filter(\.isFinite).map(abs).max() ?? 0
        return largest > 0 ? largest : 1
    }

    /// A value's place on the scale: 0 (most negative) ... 1 (most positive).
    func position(_ value: Double) -> Double {
        guard value.isFinite else { return 0.5 }
        return min(max((value + extent) / (2 * extent), 0), 1)
    }
}

/// Plotly's RdBu (ColorBrewer's 11-class RdBu), low to high.
enum RdBu {
    static let stops: [(Double, Double, Double)] = [
        (103, 0, 31), (178, 24, 43), (214, 96, 77), (244, 165, 130), (253, 219, 199), (247, 247, 247),
        (209, 229, 240), (146, 197, 222), (67, 147, 195), (33, 102, 172), (5, 48, 97),
    ]

    /// The colour at t in [0, 1], interpolated linearly between stops, as 0-255 components.
    static func color(_ t: Double) -> (red: Int, green: Int, blue: Int) {
        let scaled = min(max(t, 0), 1) * Double(stops.count - 1)
        let index = min(Int(scaled), stops.count - 2)
        let f = scaled - Double(index)
        let (a, b) = (stops[index], stops[index + 1])
        func mix(_ x: Double, _ y: Double) -> Int { Int((x + (y - x) * f).rounded()) }
        return (mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
    }

    static func hex(_ t: Double) -> String {
        let c = color(t)
        return String(format: "#%02x%02x%02x", c.red, c.green, c.blue)
    }

    /// Dark text on light cells, light text on dark ones.
    static func textIsDark(_ t: Double) -> Bool {
        let c = color(t)
        return 0.299 * Double(c.red) + 0.587 * Double(c.green) + 0.114 * Double(c.blue) > 140
    }
}

// MARK: The terminal

enum TerminalColors: String {
    case trueColor, palette256, none

    /// 24-bit where the terminal says it has it (COLORTERM), else the 256-colour palette;
    /// none when the output is not a terminal or NO_COLOR is set.
    static func detect(forced: String) -> TerminalColors {
        let environment = ProcessInfo.processInfo.environment
        switch forced {
        case "never": return .none
        case "always": break
        default:
            if isatty(STDOUT_FILENO) == 0 || environment["NO_COLOR"] != nil || environment["TERM"] == "dumb" { return .none }
        }
        let declared = environment["COLORTERM"]?.lowercased() ?? ""
        return declared.contains("truecolor") || declared.contains("24bit") ? .trueColor : .palette256
    }

    func background(_ t: Double) -> String {
        let c = RdBu.color(t)
        switch self {
        case .trueColor: return "\u{1B}[48;2;\(c.red);\(c.green);\(c.blue)m"
        case .palette256: return "\u{1B}[48;5;\(Self.cubeIndex(c))m"
        case .none: return ""
        }
    }

    func foreground(dark: Bool) -> String {
        switch self {
        case .none: return ""
        default: return dark ? "\u{1B}[38;5;16m" : "\u{1B}[38;5;231m"
        }
    }

    var reset: String { self == .none ? "" : "\u{1B}[0m" }

    /// The nearest colour of the 6x6x6 cube of the 256-colour palette.
    static func cubeIndex(_ c: (red: Int, green: Int, blue: Int)) -> Int {
        let levels = [0, 95, 135, 175, 215, 255]
        func nearest(_ v: Int) -> Int { levels.indices.min { abs(levels[$0] - v) < abs(levels[$1] - v) }! }
        return 16 + 36 * nearest(c.red) + 6 * nearest(c.green) + nearest(c.blue)
    }
}

extension Heatmap {
    /// The heatmap as terminal text: a title, one line per row with its label, coloured cells
    /// (each showing its value when there is room or no colour), the column labels written
    /// downwards beneath their columns, and a colour bar.
    func terminal(colors: TerminalColors, width: Int) -> String {
        let labelWidth = max(rowLabels.map(\.count).max() ?? 0, rowAxis.count)
        let wide = labelWidth + 1 + columnLabels.count * 6 <= width || colors == .none
        let cell = wide ? 6 : 3
        var lines = [title, ""]
        lines.append(rowAxis.padding(toLength: labelWidth, withPad: " ", startingAt: 0))
        for (label, row) in zip(rowLabels, values) {
            var line = String(repeating: " ", count: labelWidth - label.count) + label + " "
            for value in row {
                let t = position(value)
                let text = wide ? String(format: "%6.2f", value) : String(repeating: " ", count: cell)
                line += colors.background(t) + colors.foreground(dark: RdBu.textIsDark(t)) + text + colors.reset
            }
            lines.append(line)
        }
        // Column labels downwards, a space shown as '·' so leading spaces stay visible.
        let shown = columnLabels.map { Array($0.replacingOccurrences(of: " ", with: "·").prefix(16)) }
        let depth = shown.map(\.count).max() ?? 0
        for index in 0..<depth {
            var line = String(repeating: " ", count: labelWidth + 1)
            for label in shown {
                let character = index < label.count ? String(label[index]) : " "
                line += String(repeating: " ", count: cell - 1) + character
            }
            lines.append(line)
        }
        lines.append(String(repeating: " ", count: labelWidth + 1) + columnAxis)
        lines.append("")
        // The colour bar: -extent ... 0 ... +extent.
        let steps = 24
        var bar = String(format: "%@ %+.2f ", colorAxis, -extent)
        for step in 0..<steps {
            let t = Double(step) / Double(steps - 1)
            bar += colors == .none ? (t < 0.5 ? "-" : (t > 0.5 ? "+" : "0")) : colors.background(t) + " " + colors.reset
        }
        bar += String(format: " %+.2f", extent)
        lines.append(bar)
        return lines.joined(separator: "\n")
    }
}

extension Heatmap {
    /// The `count` cells of largest magnitude, largest first, one line each: for a matrix too
    /// wide for a terminal (a column per neuron).
    func largest(_ count: Int) -> String {
        let cells = values.enumerated().flatMap { row, values in values.enumerated().map { (row, $0, $1) } }
            .filter { $0.2.isFinite }.sorted { abs($0.2) > abs($1.2) }.prefix(count)
        var lines = [title, "", "The \(cells.count) cells of largest magnitude (\(colorAxis)):"]
        for (row, column, value) in cells {
            lines.append(String(format: "  %@ %@, %@: %+.4f", rowAxis, row < rowLabels.count ? rowLabels[row] : String(row),
                                column < columnLabels.count ? columnLabels[column] : String(column), value))
        }
        return lines.joined(separator: "\n")
    }
}

// MARK: SVG and HTML

extension Heatmap {
    /// A self-contained SVG: title, cells (each with a tooltip giving its value), row and
    /// column tick labels, axis titles and a colour bar with its title.
    func svg() -> String {
        let columns = max(columnLabels.count, 1), rows = max(rowLabels.count, 1)
        let cellWidth = min(48.0, max(14.0, 760.0 / Double(columns)))
        let cellHeight = min(28.0, max(10.0, 560.0 / Double(rows)))
        let longestColumn = Double(columnLabels.map(\.count).max() ?? 1)
        let longestRow = Double(rowLabels.map(\.count).max() ?? 1)
        let left = 40 + 7 * longestRow, top = 56.0
        let plotWidth = cellWidth * Double(columns), plotHeight = cellHeight * Double(rows)
        let bottom = 30 + 6.5 * longestColumn
        let barX = left + plotWidth + 28, barWidth = 16.0
        let width = barX + barWidth + 100, height = top + plotHeight + bottom + 10
        var out = [String]()
        out.append(##"<svg xmlns="http://www.w3.org/2000/svg" width="\##(f(width))" height="\##(f(height))" viewBox="0 0 \##(f(width)) \##(f(height))" font-family="Helvetica, Arial, sans-serif" font-size="11">"##)
        out.append("<title>\(escape(title))</title>")
        out.append(##"<rect width="100%" height="100%" fill="#ffffff"/>"##)
        out.append(##"<text x="\##(f(left))" y="28" font-size="16" fill="#2a3f5f">\##(escape(title))</text>"##)
        // Cells, row 0 at the top.
        out.append(##"<g class="cells" shape-rendering="crispEdges">"##)
        for (r, row) in values.enumerated() {
            for (c, value) in row.enumerated() {
                let x = left + Double(c) * cellWidth, y = top + Double(r) * cellHeight
                let tip = "\(rowAxis): \(r < rowLabels.count ? rowLabels[r] : String(r)), \(columnAxis): \(c < columnLabels.count ? columnLabels[c] : String(c)), \(colorAxis): \(String(format: "%.4f", value))"
                out.append(##"<rect x="\##(f(x))" y="\##(f(y))" width="\##(f(cellWidth))" height="\##(f(cellHeight))" fill="\##(RdBu.hex(position(value)))"><title>\##(escape(tip))</title></rect>"##)
            }
        }
        out.append("</g>")
        // Row labels and axis title.
        out.append(##"<g class="rows" text-anchor="end" fill="#2a3f5f">"##)
        for (r, label) in rowLabels.enumerated() {
            out.append(##"<text x="\##(f(left - 6))" y="\##(f(top + (Double(r) + 0.5) * cellHeight + 4))">\##(escape(label))</text>"##)
        }
        out.append("</g>")
        out.append(##"<text x="14" y="\##(f(top + plotHeight / 2))" transform="rotate(-90 14 \##(f(top + plotHeight / 2)))" text-anchor="middle" font-size="13" fill="#2a3f5f">\##(escape(rowAxis))</text>"##)
        // Column labels, turned to read upwards, and axis title.
        out.append(##"<g class="columns" text-anchor="end" fill="#2a3f5f">"##)
        for (c, label) in columnLabels.enumerated() {
            let x = left + (Double(c) + 0.5) * cellWidth + 4, y = top + plotHeight + 8
            out.append(##"<text x="\##(f(x))" y="\##(f(y))" transform="rotate(-90 \##(f(x)) \##(f(y)))" xml:space="preserve">\##(escape(label))</text>"##)
        }
        out.append("</g>")
        out.append(##"<text x="\##(f(left + plotWidth / 2))" y="\##(f(height - 12))" text-anchor="middle" font-size="13" fill="#2a3f5f">\##(escape(columnAxis))</text>"##)
        // The colour bar: +extent at the top, -extent at the bottom.
        out.append(##"<defs><linearGradient id="rdbu" x1="0" y1="1" x2="0" y2="0">"##)
        for (i, stop) in RdBu.stops.enumerated() {
            let offset = Double(i) / Double(RdBu.stops.count - 1)
            out.append(##"<stop offset="\##(f(offset))" stop-color="rgb(\##(Int(stop.0)),\##(Int(stop.1)),\##(Int(stop.2)))"/>"##)
        }
        out.append("</linearGradient></defs>")
        out.append(##"<rect class="colorbar" x="\##(f(barX))" y="\##(f(top))" width="\##(f(barWidth))" height="\##(f(plotHeight))" fill="url(#rdbu)" stroke="#cccccc"/>"##)
        for (fraction, value) in [(0.0, extent), (0.5, 0.0), (1.0, -extent)] {
            let y = top + fraction * plotHeight
            out.append(##"<line x1="\##(f(barX + barWidth))" y1="\##(f(y))" x2="\##(f(barX + barWidth + 4))" y2="\##(f(y))" stroke="#444444"/>"##)
            out.append(##"<text x="\##(f(barX + barWidth + 7))" y="\##(f(y + 4))" fill="#2a3f5f">\##(String(format: "%.2f", value))</text>"##)
        }
        out.append(##"<text x="\##(f(barX))" y="\##(f(top - 8))" fill="#2a3f5f">\##(escape(colorAxis))</text>"##)
        out.append("</svg>")
        return out.joined(separator: "\n") + "\n"
    }

    /// An HTML page with the SVG inline and the numbers in a table: opens from disk in any
    /// browser, with no script and nothing fetched.
    func html(summary: [String]) -> String {
        var out = ["<!DOCTYPE html>", ##"<html lang="en">"##, "<head>", ##"<meta charset="utf-8">"##,
                   "<title>\(escape(title))</title>",
                   "<style>body{font-family:Helvetica,Arial,sans-serif;margin:2em;color:#2a3f5f}table{border-collapse:collapse;font-size:11px}td,th{padding:2px 5px;border:1px solid #ddd;text-align:right}th{background:#f4f6f8;white-space:pre}</style>",
                   "</head>", "<body>", "<h1>\(escape(title))</h1>"]
        for line in summary { out.append("<p>\(escape(line))</p>") }
        out.append(##"<div class="figure">"##)
        out.append(svg())
        out.append("</div>")
        out.append("<details><summary>Values</summary><table>")
        out.append("<tr><th>\(escape(rowAxis))</th>" + columnLabels.map { "<th>\(escape($0))</th>" }.joined() + "</tr>")
        for (label, row) in zip(rowLabels, values) {
            out.append("<tr><th>\(escape(label))</th>" + row.map { String(format: "<td>%.4f</td>", $0) }.joined() + "</tr>")
        }
        out.append("</table></details>")
        out.append("</body>")
        out.append("</html>")
        return out.joined(separator: "\n") + "\n"
    }

    private func f(_ value: Double) -> String { String(format: "%.1f", value) }
}

/// Text as XML character data or an attribute value: markup characters escaped, and the
/// control characters XML 1.0 forbids shown as U+FFFD.
func escape(_ text: String) -> String {
    var out = ""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "&": out += "&amp;"
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        case "\"": out += "&quot;"
        case "'": out += "&apos;"
        case "\t", "\n", "\r": out.unicodeScalars.append(scalar)
        default:
            out.unicodeScalars.append(scalar.value < 0x20 || (0xFFFE...0xFFFF).contains(scalar.value) ? "\u{FFFD}" : scalar)
        }
    }
    return out
}
