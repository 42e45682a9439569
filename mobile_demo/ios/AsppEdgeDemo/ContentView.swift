import PhotosUI
import SwiftUI

/// Pick a photo (or the bundled sample), segment it with Core ML through Vision or with the
/// .pte in ExecuTorch, show the overlay, the legend and the latency.
struct ContentView: View {
    enum Runtime: String, CaseIterable, Identifiable {
        case coreml = "Core ML (Vision)"
        case executorch = "ExecuTorch"
        var id: String { rawValue }
    }

    @State private var runtime: Runtime = .coreml
    @State private var picked: PhotosPickerItem?
    @State private var shown: CGImage?
    @State private var status = ""
    @State private var legend = ""
    @State private var segmenters: [Runtime: MaskSegmenter] = [:]

    var body: some View {
        VStack(spacing: 8) {
            Picker("Runtime", selection: $runtime) {
                ForEach(Runtime.allCases.filter { Assets.installed.contains($0 == .coreml ? "coreml" : "executorch") }) {
                    Text($0.rawValue).tag($0)
                }
            }
            .pickerStyle(.segmented)
            HStack {
                Button("Sample") { run(Assets.sample()) }
                PhotosPicker("Pick image", selection: $picked, matching: .images)
            }
            Text(status).font(.footnote).textSelection(.enabled)
            if let shown {
                Image(decorative: shown, scale: 1).resizable().scaledToFit()
            } else {
                Spacer()
            }
            Text(legend).font(.footnote)
        }
        .padding()
        .onAppear {
            if Assets.installed.isEmpty {
                status = "No models bundled: run `aspp-edge export --for-apps mobile_demo` (mobile_demo/README.md)"
            } else {
                if !Assets.installed.contains("coreml") { runtime = .executorch }
                run(Assets.sample())
            }
        }
        .onChange(of: picked) { _, item in
            Task {
                guard let data = try? await item?.loadTransferable(type: Data.self),
                      let source = CGImageSourceCreateWithData(data as CFData, nil) else { return }
                // a thumbnail "with transform" is the image with its EXIF orientation applied (CONTRACT.md step 1)
                let options: [CFString: Any] = [kCGImageSourceCreateThumbnailFromImageAlways: true,
                                                kCGImageSourceCreateThumbnailWithTransform: true,
                                                kCGImageSourceThumbnailMaxPixelSize: 4096]
                guard let image = CGImageSourceCreateThumbnailAtIndex(source, 0, options as CFDictionary) else { return }
                run(image)
            }
        }
    }

    private func segmenter() throws -> MaskSegmenter {
        if let s = segmenters[runtime] { return s }
        let s: MaskSegmenter = runtime == .coreml ? try CoreMLSegmenter() : try ExecuTorchSegmenter()
        segmenters[runtime] = s
        return s
    }

    private func run(_ image: CGImage?) {
        guard let image else { status = "cannot read the image"; return }
        do {
            let s = try segmenter()
            let result = try s.segment(image)
            let rgb = try RGBImage.render(image, width: image.width, height: image.height,
                                          box: Box(x: 0, y: 0, w: image.width, h: image.height))
            shown = Contract.overlay(rgb, mask: result.mask, colors: s.manifest.colors).cgImage()
            let m = s.manifest
            status = String(format: "%@ %@ %@: %.1f ms (%dx%d input)", s.runtimeName, m.precision, m.method, result.latencyMs, m.width, m.height)
            var counts = [Int](repeating: 0, count: m.classes)
            for v in result.mask { counts[Int(v)] += 1 }
            legend = counts.indices.filter { counts[$0] > 0 }.sorted { counts[$0] > counts[$1] }
                .map { String(format: "■ %@ %.0f%%", m.labels[$0], 100.0 * Double(counts[$0]) / Double(result.mask.count)) }
                .joined(separator: "   ")
        } catch {
            status = "\(runtime.rawValue): \(error)"
        }
    }
}
