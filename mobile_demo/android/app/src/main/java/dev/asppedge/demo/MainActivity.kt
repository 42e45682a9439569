package dev.asppedge.demo

import android.Manifest
import android.content.pm.PackageManager
import android.graphics.Bitmap
import android.graphics.BitmapFactory
import android.graphics.ImageDecoder
import android.graphics.Matrix
import android.net.Uri
import android.os.Bundle
import android.util.Log
import android.view.View
import androidx.activity.result.PickVisualMediaRequest
import androidx.activity.result.contract.ActivityResultContracts
import androidx.appcompat.app.AppCompatActivity
import androidx.camera.core.CameraSelector
import androidx.camera.core.ImageAnalysis
import androidx.camera.core.ImageProxy
import androidx.camera.core.Preview
import androidx.camera.lifecycle.ProcessCameraProvider
import androidx.core.content.ContextCompat
import dev.asppedge.demo.databinding.ActivityMainBinding
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors
import java.util.concurrent.TimeUnit
import kotlin.concurrent.thread

/**
 * Pick an image (or the bundled sample, or the live camera), segment it with the .pte in
 * ExecuTorch or the .tflite in LiteRT, show the overlay, the legend and the latency.
 *
 * Threads: the UI thread only reads the controls and shows results. Decoding, segmenter creation
 * and every segmentation run on `worker` (one thread, so the runtimes are never used concurrently);
 * onDestroy closes the runtimes only after the worker has terminated.
 */
class MainActivity : AppCompatActivity() {
    private lateinit var ui: ActivityMainBinding
    private val segmenters = mutableMapOf<String, Segmenter>() // used on `worker`, closed after it terminates
    private val worker: ExecutorService = Executors.newSingleThreadExecutor()
    private var cameraProvider: ProcessCameraProvider? = null
    private var analysis: ImageAnalysis? = null

    /** "executorch" or "tflite": set on the UI thread, read on the worker. */
    @Volatile
    private var runtimeKey = "executorch"

    private val pickImage = registerForActivityResult(ActivityResultContracts.PickVisualMedia()) { uri ->
        if (uri != null) segmentAndShow("picked image") { decode(uri) }
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
        runtimeKey = if (ui.useLitert.isChecked) "tflite" else "executorch"
        ui.runtime.setOnCheckedChangeListener { _, checkedId ->
            runtimeKey = if (checkedId == R.id.use_litert) "tflite" else "executorch"
        }

        ui.sample.setOnClickListener { segmentAndShow("sample") { loadSample() } }
        ui.pick.setOnClickListener {
            pickImage.launch(PickVisualMediaRequest(ActivityResultContracts.PickVisualMedia.ImageOnly))
        }
        ui.camera.setOnCheckedChangeListener { _, on ->
            if (!on) stopCamera()
            else if (ContextCompat.checkSelfPermission(this, Manifest.permission.CAMERA) == PackageManager.PERMISSION_GRANTED) startCamera()
            else askCamera.launch(Manifest.permission.CAMERA)
        }
        segmentAndShow("sample") { loadSample() }
    }

    /** Runs on the worker. */
    private fun loadSample(): Bitmap {
        val options = BitmapFactory.Options().apply { inScaled = false; inPreferredConfig = Bitmap.Config.ARGB_8888 }
        return assets.open(Assets.SAMPLE).use { BitmapFactory.decodeStream(it, null, options)!! }
    }

    /** Runs on the worker: decoding a phone photo takes long enough to freeze the UI. */
    private fun decode(uri: Uri): Bitmap {
        val source = ImageDecoder.createSource(contentResolver, uri) // applies the EXIF orientation
        val bitmap = ImageDecoder.decodeBitmap(source) { decoder, _, _ ->
            decoder.allocator = ImageDecoder.ALLOCATOR_SOFTWARE // getPixels needs a software bitmap
        }
        return bitmap.copy(Bitmap.Config.ARGB_8888, false)
    }

    /** Runs on the worker: creates the chosen runtime's segmenter on first use. */
    private fun current(): Segmenter {
        val key = runtimeKey
        return synchronized(segmenters) {
            segmenters.getOrPut(key) { if (key == "tflite") LiteRtSegmenter(this) else ExecuTorchSegmenter(this) }
        }
    }

    private fun segmentAndShow(what: String, load: () -> Bitmap) = worker.execute { segmentHere(what, load) }

    /** Runs on the worker: decode (`load`), segment and overlay here; show the result on the UI thread. */
    private fun segmentHere(what: String, load: () -> Bitmap) {
        try {
            val image = load()
            val segmenter = current()
            val result = segmenter.segment(image)
            val shown = Contract.overlay(image, result.mask, segmenter.manifest.colors)
            val legend = legendText(result.mask, segmenter.manifest)
            val m = segmenter.manifest
            val status = "${segmenter.runtimeName} ${m.precision}${if (m.method != "none") " " + m.method else ""}, $what: " +
                "%.1f ms (%dx%d input)".format(result.latencyMs, m.width, m.height)
            show {
                ui.overlay.setImageBitmap(shown)
                ui.legend.text = legend
                ui.status.text = status
            }
        } catch (e: Exception) {
            Log.e(TAG, "cannot segment the $what", e)
            show { ui.status.text = "cannot segment the $what: ${e.message}" }
        }
    }

    /** On the UI thread, unless the activity is gone by then. */
    private fun show(update: () -> Unit) = runOnUiThread { if (!isDestroyed) update() }

    private fun legendText(mask: ByteArray, m: ArtifactManifest): String {
        val counts = IntArray(m.classes)
        for (v in mask) counts[v.toInt() and 0xFF]++
        return counts.indices.filter { counts[it] > 0 }.sortedByDescending { counts[it] }
            .joinToString("   ") { "■ ${m.labels[it]} %.0f%%".format(100.0 * counts[it] / mask.size) }
    }

    /** A camera frame as an upright bitmap, as the user holds the phone (the sensor's frames are rotated). */
    private fun upright(frame: ImageProxy): Bitmap {
        try {
            val rotation = frame.imageInfo.rotationDegrees
            val raw = frame.toBitmap()
            return if (rotation == 0) raw else
                Bitmap.createBitmap(raw, 0, 0, raw.width, raw.height, Matrix().apply { postRotate(rotation.toFloat()) }, true)
        } finally {
            frame.close()
        }
    }

    private fun startCamera() {
        ui.preview.visibility = View.VISIBLE
        val future = ProcessCameraProvider.getInstance(this)
        future.addListener({
            val provider = future.get()
            cameraProvider = provider
            val preview = Preview.Builder().build().also { it.setSurfaceProvider(ui.preview.surfaceProvider) }
            val frames = ImageAnalysis.Builder()
                .setBackpressureStrategy(ImageAnalysis.STRATEGY_KEEP_ONLY_LATEST)
                .setOutputImageFormat(ImageAnalysis.OUTPUT_IMAGE_FORMAT_RGBA_8888)
                .build()
            // the analyzer runs on the worker, like every other segmentation
            frames.setAnalyzer(worker) { frame -> segmentHere("camera") { upright(frame) } }
            analysis = frames
            provider.unbindAll()
            provider.bindToLifecycle(this, CameraSelector.DEFAULT_BACK_CAMERA, preview, frames)
        }, ContextCompat.getMainExecutor(this))
    }

    private fun stopCamera() {
        analysis?.clearAnalyzer() // no more frames handed to the worker
        analysis = null
        cameraProvider?.unbindAll()
        ui.preview.visibility = View.GONE
    }

    override fun onDestroy() {
        if (::ui.isInitialized) stopCamera()
        // Nothing new starts on the worker; what is queued or running finishes. The runtimes are closed
        // only once the worker has terminated: ExecuTorch's Module.destroy() does not free a module while
        // it runs, and LiteRT's Interpreter.close() frees what a running run() still uses. The wait is on
        // a thread of its own so that a long segmentation does not hold up the UI thread.
        worker.shutdown()
        thread(name = "close-segmenters") {
            if (worker.awaitTermination(CLOSE_TIMEOUT_S, TimeUnit.SECONDS)) {
                synchronized(segmenters) {
                    segmenters.values.forEach { it.close() }
                    segmenters.clear()
                }
            } else {
                Log.w(TAG, "worker still busy after $CLOSE_TIMEOUT_S s; its runtimes are left to the garbage collector")
            }
        }
        super.onDestroy()
    }

    private companion object {
        const val TAG = "AsppEdgeDemo"
        const val CLOSE_TIMEOUT_S = 60L
    }
}
