import CoreML
import ExecuTorch
import Foundation
import Vision

/// File names written by `aspp-edge export --for-apps` into AsppEdgeDemo/Models (see CONTRACT.md).
enum Assets {
    static let coreml = "Segmenter"  // Segmenter.mlpackage, compiled by Xcode into Segmenter.mlmodelc
    static let coremlManifest = "Segmenter.mlpackage.manifest.json"
    static let coremlExpectedMask = "Segmenter.mlpackage.expected_mask.png"
    static let pte = "segmenter.pte"
    static let pteManifest = "segmenter.pte.manifest.json"
    static let pteExpectedMask = "segmenter.pte.expected_mask.png"
    static let sampleName = "sample.png"
    static let index = "apps.json"

    static func url(_ file: String, bundle: Bundle = .main) -> URL? {
        let name = (file as NSString).deletingPathExtension, ext = (file as NSString).pathExtension
        return bundle.url(forResource: name, withExtension: ext)
    }

    /// Backends bundled in this build, from apps.json.
    static var installed: Set<String> {
        guard let url = url(index), let data = try? Data(contentsOf: url),
              let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let artifacts = json["artifacts"] as? [String: Any] else { return [] }
        return Set(artifacts.keys)
    }

    static func image(_ file: String) -> CGImage? {
        guard let url = url(file), let source = CGImageSourceCreateWithURL(url as CFURL, nil) else { return nil }
        return CGImageSourceCreateImageAtIndex(source, 0, nil)
    }

    static func sample() -> CGImage? { image(sampleName) }
}

enum SegmenterError: Error {
    case missing(String)
    case output(String)
}

struct SegmentationResult {
    let mask: [UInt8]  // at the image's size
    let modelMask: [UInt8]
    let box: Box
    let latencyMs: Double
}

/// One artifact behind the contract. Not named `Segmenter`: Xcode generates a Swift class named after
/// each bundled model (`Segmenter`, `SegmenterInput`, `SegmenterOutput` for Segmenter.mlpackage), and
/// a type of ours with one of those names would not compile. tests/test_app_sources.py checks this.
protocol MaskSegmenter {
    var manifest: ArtifactManifest { get }
    var runtimeName: String { get }
    /// Logits (NCHW or NHWC per the manifest) for one letterboxed image.
    func logits(_ image: RGBImage) throws -> [Float]
}

extension MaskSegmenter {
    func segment(_ image: CGImage) throws -> SegmentationResult {
        let m = manifest
        let box = Contract.letterboxBox(width: image.width, height: image.height, toWidth: m.width, toHeight: m.height)
        let canvas = try RGBImage.render(image, width: m.width, height: m.height, box: box)
        let start = DispatchTime.now().uptimeNanoseconds
        let out = try logits(canvas)
        let ms = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6
        let modelMask = Contract.argmax(out, m)
        let mask = Contract.unletterbox(modelMask, m, box: box, width: image.width, height: image.height)
        return SegmentationResult(mask: mask, modelMask: modelMask, box: box, latencyMs: ms)
    }
}

/// The .mlpackage through Vision: its ImageType input takes the letterboxed pixels (the model
/// normalizes them), `.scaleFill` leaves an input-sized image as it is.
final class CoreMLSegmenter: MaskSegmenter {
    let manifest: ArtifactManifest
    let runtimeName = "Core ML"
    private let model: VNCoreMLModel

    init(computeUnits: MLComputeUnits = .all) throws {
        guard let modelURL = Assets.url("\(Assets.coreml).mlmodelc") else { throw SegmenterError.missing("Segmenter.mlmodelc") }
        guard let manifestURL = Assets.url(Assets.coremlManifest) else { throw SegmenterError.missing(Assets.coremlManifest) }
        manifest = try ArtifactManifest.load(manifestURL)
        let config = MLModelConfiguration()
        config.computeUnits = computeUnits
        model = try VNCoreMLModel(for: MLModel(contentsOf: modelURL, configuration: config))
    }

    func logits(_ image: RGBImage) throws -> [Float] {
        guard let cg = image.cgImage() else { throw SegmenterError.output("cannot make a CGImage") }
        let request = VNCoreMLRequest(model: model)
        request.imageCropAndScaleOption = .scaleFill
        try VNImageRequestHandler(cgImage: cg, options: [:]).perform([request])
        guard let observation = request.results?.first as? VNCoreMLFeatureValueObservation,
              let array = observation.featureValue.multiArrayValue else {
            throw SegmenterError.output("no MultiArray output (\(manifest.output.name))")
        }
        return Self.floats(array)
    }

    /// The MultiArray's values in its logical (row-major) order, whatever its strides and type.
    static func floats(_ array: MLMultiArray) -> [Float] {
        let shape = array.shape.map { $0.intValue }, strides = array.strides.map { $0.intValue }
        let count = shape.reduce(1, *)
        var out = [Float](repeating: 0, count: count)
        var index = [Int](repeating: 0, count: shape.count)
        for i in 0..<count {
            var offset = 0
            for d in 0..<shape.count { offset += index[d] * strides[d] }
            switch array.dataType {
            case .float32: out[i] = array.dataPointer.assumingMemoryBound(to: Float.self)[offset]
            case .float16: out[i] = Float(array.dataPointer.assumingMemoryBound(to: Float16.self)[offset])
            case .double: out[i] = Float(array.dataPointer.assumingMemoryBound(to: Double.self)[offset])
            default: out[i] = array[offset].floatValue
            }
            var d = shape.count - 1
            while d >= 0 {
                index[d] += 1
                if index[d] < shape[d] { break }
                index[d] = 0
                d -= 1
            }
        }
        return out
    }
}

/// The .pte through ExecuTorch's Swift API (XNNPACK backend linked into the app).
final class ExecuTorchSegmenter: MaskSegmenter {
    let manifest: ArtifactManifest
    let runtimeName = "ExecuTorch"
    private let module: Module

    init() throws {
        guard let pte = Assets.url(Assets.pte) else { throw SegmenterError.missing(Assets.pte) }
        guard let manifestURL = Assets.url(Assets.pteManifest) else { throw SegmenterError.missing(Assets.pteManifest) }
        manifest = try ArtifactManifest.load(manifestURL)
        module = Module(filePath: pte.path)
        try module.load("forward")
    }

    func logits(_ image: RGBImage) throws -> [Float] {
        let input = Tensor<Float>(Contract.floatInput(image, manifest), shape: manifest.input.shape)
        let outputs = try module.forward(input)
        guard let tensor: Tensor<Float> = outputs.first?.tensor() else {
            throw SegmenterError.output("forward returned no float tensor")
        }
        // ExecuTorch's iOS guide shows scalars() both with and without `try`: with it, this compiles either
        // way (a warning at worst); without it, a throwing scalars() would not compile.
        return try tensor.scalars()
    }
}
