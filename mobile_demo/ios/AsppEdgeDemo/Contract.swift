import CoreGraphics
import Foundation

/// mobile_demo/CONTRACT.md in Swift: manifest fields, letterbox, input tensor, argmax, overlay.
/// The host demo (`aspp-edge demo`) and the Android app implement the same steps.
struct Quantization: Decodable {
    let dtype: String
    let scale: Float
    let zero_point: Int
}

struct ArtifactManifest: Decodable {
    struct Normalization: Decodable {
        let pixel_scale: Float
        let mean: [Float]
        let std: [Float]
        let applied_by: String
    }
    struct Input: Decodable {
        let name: String
        let kind: String
        let shape: [Int]
        let layout: String
        let dtype: String
        let normalization: Normalization
        let quantization: Quantization?
    }
    struct Output: Decodable {
        let name: String
        let shape: [Int]
        let layout: String
        let dtype: String
        let quantization: Quantization?
    }

    let schema_version: Int
    let artifact: String
    let backend: String
    let precision: String
    let method: String
    let input: Input
    let output: Output
    let labels: [String]
    let colors: [[Int]]

    var width: Int { input.layout == "NCHW" ? input.shape[3] : input.shape[2] }
    var height: Int { input.layout == "NCHW" ? input.shape[2] : input.shape[1] }
    var classes: Int { output.layout == "NCHW" ? output.shape[1] : output.shape[3] }
    var outHeight: Int { output.layout == "NCHW" ? output.shape[2] : output.shape[1] }
    var outWidth: Int { output.layout == "NCHW" ? output.shape[3] : output.shape[2] }

    static func load(_ url: URL) throws -> ArtifactManifest {
        let m = try JSONDecoder().decode(ArtifactManifest.self, from: Data(contentsOf: url))
        guard m.schema_version == 1 else { throw ContractError.schema(m.schema_version) }
        return m
    }
}

enum ContractError: Error {
    case schema(Int)
    case image(String)
}

struct Box { let x: Int; let y: Int; let w: Int; let h: Int }

/// 8-bit RGB pixels, row-major, 3 bytes per pixel.
struct RGBImage {
    let width: Int
    let height: Int
    var pixels: [UInt8]

    /// Steps 1-2: draw `image` (alpha composited over black, greyscale expanded) scaled into a
    /// black `width` x `height` canvas at `box` (bilinear: Core Graphics' high interpolation).
    static func render(_ image: CGImage, width: Int, height: Int, box: Box) throws -> RGBImage {
        var rgba = [UInt8](repeating: 0, count: width * height * 4)
        let drawn: Bool = rgba.withUnsafeMutableBytes { raw in
            guard let ctx = CGContext(data: raw.baseAddress, width: width, height: height, bitsPerComponent: 8,
                                      bytesPerRow: width * 4, space: CGColorSpace(name: CGColorSpace.sRGB)!,
                                      bitmapInfo: CGImageAlphaInfo.premultipliedLast.rawValue) else { return false }
            ctx.setFillColor(CGColor(red: 0, green: 0, blue: 0, alpha: 1))
            ctx.fill(CGRect(x: 0, y: 0, width: width, height: height))
            ctx.interpolationQuality = .high
            // Core Graphics' origin is bottom-left: flip y so the box is measured from the top.
            ctx.draw(image, in: CGRect(x: box.x, y: height - box.y - box.h, width: box.w, height: box.h))
            return true
        }
        guard drawn else { throw ContractError.image("cannot create a \(width)x\(height) RGBA context") }
        var rgb = [UInt8](repeating: 0, count: width * height * 3)
        for i in 0..<(width * height) {  // premultiplied over opaque black = composited over black
            rgb[3 * i] = rgba[4 * i]; rgb[3 * i + 1] = rgba[4 * i + 1]; rgb[3 * i + 2] = rgba[4 * i + 2]
        }
        return RGBImage(width: width, height: height, pixels: rgb)
    }

    func cgImage() -> CGImage? {
        var rgba = [UInt8](repeating: 255, count: width * height * 4)
        for i in 0..<(width * height) {
            rgba[4 * i] = pixels[3 * i]; rgba[4 * i + 1] = pixels[3 * i + 1]; rgba[4 * i + 2] = pixels[3 * i + 2]
        }
        guard let provider = CGDataProvider(data: Data(rgba) as CFData) else { return nil }
        return CGImage(width: width, height: height, bitsPerComponent: 8, bitsPerPixel: 32, bytesPerRow: width * 4,
                       space: CGColorSpace(name: CGColorSpace.sRGB)!,
                       bitmapInfo: CGBitmapInfo(rawValue: CGImageAlphaInfo.noneSkipLast.rawValue),
                       provider: provider, decode: nil, shouldInterpolate: false, intent: .defaultIntent)
    }
}

enum Contract {
    static func letterboxBox(width w: Int, height h: Int, toWidth W: Int, toHeight H: Int) -> Box {
        let s = min(Double(W) / Double(w), Double(H) / Double(h))
        let bw = min(W, max(1, Int((Double(w) * s).rounded(.toNearestOrEven))))
        let bh = min(H, max(1, Int((Double(h) * s).rounded(.toNearestOrEven))))
        return Box(x: (W - bw) / 2, y: (H - bh) / 2, w: bw, h: bh)
    }

    /// Steps 3-5 for tensor inputs: normalized float32 in the manifest's layout.
    static func floatInput(_ image: RGBImage, _ m: ArtifactManifest) -> [Float] {
        let n = image.width * image.height
        var out = [Float](repeating: 0, count: 3 * n)
        let norm = m.input.normalization
        for i in 0..<n {
            for c in 0..<3 {
                let p = Float(image.pixels[3 * i + c])
                let x = norm.applied_by == "app" ? (p * norm.pixel_scale - norm.mean[c]) / norm.std[c] : p
                out[m.input.layout == "NCHW" ? c * n + i : 3 * i + c] = x
            }
        }
        return out
    }

    /// Output step 2: argmax over classes, ties to the lowest index.
    static func argmax(_ logits: [Float], _ m: ArtifactManifest) -> [UInt8] {
        let c = m.classes, hw = m.outHeight * m.outWidth
        var mask = [UInt8](repeating: 0, count: hw)
        for i in 0..<hw {
            var best = 0
            var value = -Float.infinity
            for k in 0..<c {
                let v = m.output.layout == "NCHW" ? logits[k * hw + i] : logits[i * c + k]
                if v > value { value = v; best = k }
            }
            mask[i] = UInt8(best)
        }
        return mask
    }

    /// Output step 3: nearest neighbour at pixel centres from the letterbox box back to width x height.
    static func unletterbox(_ mask: [UInt8], _ m: ArtifactManifest, box: Box, width: Int, height: Int) -> [UInt8] {
        let sy = Double(m.outHeight) / Double(m.height), sx = Double(m.outWidth) / Double(m.width)
        var out = [UInt8](repeating: 0, count: width * height)
        for y in 0..<height {
            let my = min(m.outHeight - 1, max(0, Int(((Double(box.y) + (Double(y) + 0.5) * Double(box.h) / Double(height)) * sy).rounded(.down))))
            for x in 0..<width {
                let mx = min(m.outWidth - 1, max(0, Int(((Double(box.x) + (Double(x) + 0.5) * Double(box.w) / Double(width)) * sx).rounded(.down))))
                out[y * width + x] = mask[my * m.outWidth + mx]
            }
        }
        return out
    }

    /// Output step 4: 50 % colour overlay.
    static func overlay(_ image: RGBImage, mask: [UInt8], colors: [[Int]]) -> RGBImage {
        var out = image
        for i in 0..<(image.width * image.height) {
            let color = colors[Int(mask[i])]
            for c in 0..<3 {
                let v = (0.5 * Double(image.pixels[3 * i + c]) + 0.5 * Double(color[c])).rounded(.toNearestOrEven)
                out.pixels[3 * i + c] = UInt8(max(0, min(255, v)))
            }
        }
        return out
    }

    static func agreement(_ a: [UInt8], _ b: [UInt8]) -> Double {
        precondition(a.count == b.count, "masks differ in size")
        return Double(zip(a, b).filter { $0 == $1 }.count) / Double(a.count)
    }
}
