package dev.asppedge.demo

import android.Manifest
import android.content.pm.PackageManager
import android.graphics.Bitmap
import android.graphics.BitmapFactory
import android.graphics.ImageDecoder
import android.graphics.Matrix
import android.os.Bundle
import android.view.View
import androidx.activity.result.PickVisualMediaRequest
import androidx.activity.result.contract.ActivityResultContracts
import androidx.appcompat.app.AppCompatActivity
import androidx.camera.core.CameraSelector
import androidx.camera.core.ImageAnalysis
import androidx.camera.core.Preview
import androidx.camera.lifecycle.ProcessCameraProvider
import androidx.core.content.ContextCompat
import dev.asppedge.demo.databinding.ActivityMainBinding
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors

/**
 * Pick an image (or the bundled sample, or the live camera), segment it with the .pte in
 * ExecuTorch or the .tflite in LiteRT, show the overlay, the legend and the latency.
 */
class MainActivity : AppCompatActivity() {
    private lateinit var ui: ActivityMainBinding
    private val segmenters = mutableMapOf<String, Segmenter>()
    private val worker: ExecutorService = Executors.newSingleThreadExecutor()
    private var cameraProvider: ProcessCameraProvider? = null

    private val pickImage = registerForActivityResult(ActivityResultContracts.PickVisualMedia()) { uri ->
        if (uri != null) {
            val source = ImageDecoder.createSource(contentResolver, uri) // applies the EXIF orientation
            val bitmap = ImageDecoder.decodeBitmap(source) { decoder, _, _ ->
                decoder.allocator = ImageDecoder.ALLOCATOR_SOFTWARE // getPixels needs a software bitmap
            }
            segmentAndShow(bitmap.copy(Bitmap.Config.ARGB_8888, false))
        }
    }

    private val askCamera = registerForActivityResult(ActivityResultContracts.RequestPermission()) { granted ->
        if (granted) startCamera() else ui.camera.isChecked = false
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        ui = ActivityMainBinding.inflate(layoutInflater)
        setContentView(ui.root)

        val installed = Assets.installed(this)
        if (installed.isEmpty()) {
            ui.status.setText(R.string.no_models)
            return
        }
        ui.useExecutorch.isEnabled = "executorch" in installed
        ui.useLitert.isEnabled = "tflite" in installed
        if ("executorch" !in installed) ui.useLitert.isChecked = true

        ui.sample.setOnClickListener { segmentAndShow(loadSample()) }
        ui.pick.setOnClickListener {
            pickImage.launch(PickVisualMediaRequest(ActivityResultContracts.PickVisualMedia.ImageOnly))
        }
        ui.camera.setOnCheckedChangeListener { _, on ->
            if (!on) stopCamera()
            else if (ContextCompat.checkSelfPermission(this, Manifest.permission.CAMERA) == PackageManager.PERMISSION_GRANTED) startCamera()
            else askCamera.launch(Manifest.permission.CAMERA)
        }
        segmentAndShow(loadSample())
    }

    private fun loadSample(): Bitmap {
        val options = BitmapFactory.Options().apply { inScaled = false; inPreferredConfig = Bitmap.Config.ARGB_8888 }
        return assets.open(Assets.SAMPLE).use { BitmapFactory.decodeStream(it, null, options)!! }
    }

    private fun current(): Segmenter {
        val key = if (ui.useLitert.isChecked) "tflite" else "executorch"
        return segmenters.getOrPut(key) {
            if (key == "tflite") LiteRtSegmenter(this) else ExecuTorchSegmenter(this)
        }
    }

    private fun segmentAndShow(image: Bitmap) {
        worker.execute {
            val segmenter = synchronized(segmenters) { current() }
            val result = segmenter.segment(image)
            val shown = Contract.overlay(image, result.mask, segmenter.manifest.colors)
            val legend = legendText(result.mask, segmenter.manifest)
            runOnUiThread {
                ui.overlay.setImageBitmap(shown)
                ui.legend.text = legend
                val m = segmenter.manifest
                ui.status.text = "${segmenter.runtimeName} ${m.precision}${if (m.method != "none") " " + m.method else ""}: " +
                    "%.1f ms (%dx%d input)".format(result.latencyMs, m.width, m.height)
            }
        }
    }

    private fun legendText(mask: ByteArray, m: ArtifactManifest): String {
        val counts = IntArray(m.classes)
        for (v in mask) counts[v.toInt() and 0xFF]++
        return counts.indices.filter { counts[it] > 0 }.sortedByDescending { counts[it] }
            .joinToString("   ") { "■ ${m.labels[it]} %.0f%%".format(100.0 * counts[it] / mask.size) }
    }

    private fun startCamera() {
        ui.preview.visibility = View.VISIBLE
        val future = ProcessCameraProvider.getInstance(this)
        future.addListener({
            val provider = future.get()
            cameraProvider = provider
            val preview = Preview.Builder().build().also { it.setSurfaceProvider(ui.preview.surfaceProvider) }
            val analysis = ImageAnalysis.Builder()
                .setBackpressureStrategy(ImageAnalysis.STRATEGY_KEEP_ONLY_LATEST)
                .setOutputImageFormat(ImageAnalysis.OUTPUT_IMAGE_FORMAT_RGBA_8888)
                .build()
            analysis.setAnalyzer(worker) { frame ->
                val rotation = frame.imageInfo.rotationDegrees
                val raw = frame.toBitmap()
                frame.close()
                // upright, as the user holds the phone (the sensor's frames are rotated)
                val bitmap = if (rotation == 0) raw else
                    Bitmap.createBitmap(raw, 0, 0, raw.width, raw.height, Matrix().apply { postRotate(rotation.toFloat()) }, true)
                val segmenter = synchronized(segmenters) { current() }
                val result = segmenter.segment(bitmap)
                val shown = Contract.overlay(bitmap, result.mask, segmenter.manifest.colors)
                runOnUiThread {
                    ui.overlay.setImageBitmap(shown)
                    ui.status.text = "${segmenter.runtimeName} camera: %.1f ms".format(result.latencyMs)
                }
            }
            provider.unbindAll()
            provider.bindToLifecycle(this, CameraSelector.DEFAULT_BACK_CAMERA, preview, analysis)
        }, ContextCompat.getMainExecutor(this))
    }

    private fun stopCamera() {
        cameraProvider?.unbindAll()
        ui.preview.visibility = View.GONE
    }

    override fun onDestroy() {
        stopCamera()
        worker.shutdown()
        segmenters.values.forEach { it.close() }
        super.onDestroy()
    }
}
