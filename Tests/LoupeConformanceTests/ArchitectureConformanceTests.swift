import Foundation
import LoupeConformance
import LoupeModels
import LoupeTestSupport
import XCTest

/// Every built-in architecture against the conformance suite, on every fixture it runs: a
/// new adapter gets all of it by adding its fixture (Tests/Fixtures/models/NAME, made by
/// scripts/make_model_fixtures.py), with no test code of its own.
final class ArchitectureConformanceTests: XCTestCase {
    func testEveryFixtureConformsAndEveryArchitectureHasOne() throws {
        let root = fixturesDirectory + "/models"
        var covered = Set<String>()
        var ran = 0
        for directory in ConformanceFixture.directories(under: root) where ConformanceFixture.hasReference(directory) {
            guard let type = ConformanceFixture.modelType(directory),
                  let adapter = try? testRegistry.adapter(forModelType: type) else { continue }
            let name = URL(fileURLWithPath: directory).lastPathComponent
            let loaded = try LoadedModel.load(directory, registry: testRegistry)
            let report = ArchitectureConformance(model: loaded, fixture: directory, interventions: testInterventions).report()
            print(report)
            for failure in report.failures { XCTFail("\(name): \(failure)") }
            covered.insert(adapter.name)
            ran += 1
        }
        XCTAssertGreaterThan(ran, 0, "no fixture under \(root) has a reference and a registered model type")
        for architecture in testRegistry.names where !covered.contains(architecture) {
            XCTFail("the built-in architecture \(architecture) has no fixture: add Tests/Fixtures/models/<name> with config.json, weights, cases.json, expected.safetensors and conformance.json")
        }
    }
}
