import CoreGraphics
import ImageIO
import XCTest
@testable import AsppEdgeDemo

/// The bundled sample through each bundled artifact on the device, against the mask the host demo
/// (`aspp-edge demo`, via `--for-apps`) predicted for the same artifact: pixel agreement >= 0.99
/// (the Neural Engine and GPU round differently from the host; CONTRACT.md). On Linux the Core ML
/// expected mask comes from aspp-edge's MIL reference interpreter (apps.json says so). Every test
/// needs the models `--for-apps` writes and fails without them, naming the command that installs them.
final class SampleMaskTests: XCTestCase {
    /// What writes AsppEdgeDemo/Models (mobile_demo/README.md, section 1).
    static let install = "from the repository root: .venv/bin/aspp-edge run --recipe default --out runs/default "
        + "--for-apps mobile_demo (or aspp-edge export ... --for-apps mobile_demo), then xcodegen generate and test again"

    struct NotBundled: Error, CustomStringConvertible, LocalizedError {
        let description: String
        var errorDescription: String? { description }
    }

    /// Throws (the test fails), with the command that installs the models, unless `backend` is bundled.
    private func requireBundled(_ backend: String) throws {
        let installed = Assets.installed
        guard installed.contains(backend) else {
            let what = installed.isEmpty ? "no models are bundled (AsppEdgeDemo/Models has no \(Assets.index))"
                : "\(Assets.index) lists \(installed.sorted()), not \(backend)"
            throw NotBundled(description: "\(what); install them \(Self.install)")
        }
    }

    private func expectedMask(_ file: String) throws -> [UInt8] {
        let image = try XCTUnwrap(Assets.image(file), "\(file) not bundled")
        var grey = [UInt8](repeating: 0, count: image.width * image.height)
        let drawn = grey.withUnsafeMutableBytes { raw -> Bool in  // the context writes into `grey` while it exists
            guard let ctx = CGContext(data: raw.baseAddress, width: image.width, height: image.height, bitsPerComponent: 8,
                                      bytesPerRow: image.width, space: CGColorSpaceCreateDeviceGray(),
                                      bitmapInfo: CGImageAlphaInfo.none.rawValue) else { return false }
            ctx.draw(image, in: CGRect(x: 0, y: 0, width: image.width, height: image.height))
            return true
        }
        XCTAssertTrue(drawn, "cannot decode \(file) as 8-bit greyscale")
        return grey
    }

    private func check(_ segmenter: MaskSegmenter, expected file: String) throws {
        let sample = try XCTUnwrap(Assets.sample(), "sample.png not bundled")
        XCTAssertEqual(sample.width, segmenter.manifest.width)
        XCTAssertEqual(sample.height, segmenter.manifest.height)
        let result = try segmenter.segment(sample)
        let agreement = Contract.agreement(result.mask, try expectedMask(file))
        XCTAssertGreaterThanOrEqual(agreement, 0.99, "\(segmenter.runtimeName): agreement \(agreement) with the host demo's mask")
        XCTAssertGreaterThan(Set(result.mask).count, 1, "a constant mask is not a segmentation")
    }

    func testCoreMLMatchesHostDemo() throws {
        try requireBundled("coreml")
        try check(CoreMLSegmenter(), expected: Assets.coremlExpectedMask)
    }

    func testCoreMLOnCPUMatchesHostDemo() throws {
        try requireBundled("coreml")
        try check(CoreMLSegmenter(computeUnits: .cpuOnly), expected: Assets.coremlExpectedMask)
    }

    func testExecuTorchMatchesHostDemo() throws {
        try requireBundled("executorch")
        try check(ExecuTorchSegmenter(), expected: Assets.pteExpectedMask)
    }

    func testLatencyMetrics() throws {
        try requireBundled("coreml")
        let segmenter = try CoreMLSegmenter()
        let sample = try XCTUnwrap(Assets.sample())
        _ = try segmenter.segment(sample)  // compile and warm up outside the measurement
        measure(metrics: [XCTClockMetric(), XCTMemoryMetric()]) {
            do {
                _ = try segmenter.segment(sample)
            } catch {
                XCTFail("segmenting the sample failed while measuring: \(error)")  // not timed as a success
            }
        }
    }
}
