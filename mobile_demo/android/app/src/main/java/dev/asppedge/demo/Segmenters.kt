package dev.asppedge.demo

import android.content.Context
import android.graphics.Bitmap
import android.os.SystemClock
import org.json.JSONObject
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor
import org.tensorflow.lite.Interpreter
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder

/** File names written by `aspp-edge export --for-apps` into app/src/main/assets (see CONTRACT.md). */
object Assets {
    const val PTE = "segmenter.pte"
    const val TFLITE = "segmenter.tflite"
    const val PTE_MANIFEST = "segmenter.pte.manifest.json"
    const val TFLITE_MANIFEST = "segmenter.tflite.manifest.json"
    const val SAMPLE = "sample.png"
    const val PTE_EXPECTED_MASK = "segmenter.pte.expected_mask.png"
    const val TFLITE_EXPECTED_MASK = "segmenter.tflite.expected_mask.png"
    const val INDEX = "apps.json"

    /** Backends present in this build's assets, from apps.json (written with the artifacts). */
    fun installed(context: Context): Set<String> {
        val names = context.assets.list("")?.toSet() ?: emptySet()
        if (INDEX !in names) return emptySet()
        val index = JSONObject(context.assets.open(INDEX).bufferedReader().use { it.readText() })
        return index.getJSONObject("artifacts").keys().asSequence().toSet()
    }

    /** Assets are inside the APK; runtimes want a file path, so copy once into the app's files. */
    fun file(context: Context, name: String): File {
        val out = File(context.filesDir, name)
        if (!out.exists() || out.length() == 0L) {
            context.assets.open(name).use { input -> out.outputStream().use { input.copyTo(it) } }
        }
        return out
    }

    fun text(context: Context, name: String): String = context.assets.open(name).bufferedReader().use { it.readText() }
}

class SegmentationResult(val mask: ByteArray, val modelMask: ByteArray, val box: Box, val latencyMs: Double)

/** One artifact behind the contract: bitmap in, mask at the bitmap's size out. */
abstract class Segmenter(val manifest: ArtifactManifest) : AutoCloseable {
    abstract val runtimeName: String

    /** Raw logits (dequantized if int8) for one input tensor. */
    protected abstract fun logits(input: InputTensor): FloatArray

    fun segment(image: Bitmap): SegmentationResult {
        val (letterboxed, box) = Contract.letterbox(image, manifest.width, manifest.height)
        val input = Contract.toInput(letterboxed, manifest)
        val start = SystemClock.elapsedRealtimeNanos()
        val out = logits(input)
        val ms = (SystemClock.elapsedRealtimeNanos() - start) / 1e6
        val modelMask = Contract.argmax(out, manifest)
        val mask = Contract.unletterbox(modelMask, manifest.outWidth, manifest.outHeight, box, image.width, image.height,
            manifest.width, manifest.height)
        return SegmentationResult(mask, modelMask, box, ms)
    }
}

/** `.pte` through ExecuTorch's Android Module API (XNNPACK delegate inside the program). */
class ExecuTorchSegmenter(context: Context) : Segmenter(ArtifactManifest.parse(Assets.text(context, Assets.PTE_MANIFEST))) {
    override val runtimeName = "ExecuTorch"
    private val module: Module = Module.load(Assets.file(context, Assets.PTE).absolutePath)

    init {
        require(manifest.inputQuantization == null) { "the .pte takes float32 input (its quantize ops are inside the program)" }
    }

    override fun logits(input: InputTensor): FloatArray {
        val tensor = Tensor.fromBlob(input.floats!!, input.shape)
        val outputs = module.forward(EValue.from(tensor))
        return outputs[0].toTensor().dataAsFloatArray
    }

    override fun close() = module.destroy()
}

/** `.tflite` through LiteRT's Interpreter (XNNPACK is its default CPU delegate). */
class LiteRtSegmenter(context: Context, threads: Int = 4) :
    Segmenter(ArtifactManifest.parse(Assets.text(context, Assets.TFLITE_MANIFEST))) {
    override val runtimeName = "LiteRT"
    private val interpreter = Interpreter(Assets.file(context, Assets.TFLITE), Interpreter.Options().setNumThreads(threads))

    override fun logits(input: InputTensor): FloatArray {
        val inBuffer = if (input.floats != null) {
            ByteBuffer.allocateDirect(4 * input.floats.size).order(ByteOrder.nativeOrder()).also { it.asFloatBuffer().put(input.floats) }
        } else {
            ByteBuffer.allocateDirect(input.bytes!!.size).order(ByteOrder.nativeOrder()).also { it.put(input.bytes) }
        }
        inBuffer.rewind()
        val count = manifest.outputShape.fold(1) { a, b -> a * b }
        val q = manifest.outputQuantization
        val outBuffer = ByteBuffer.allocateDirect(count * (if (q == null) 4 else 1)).order(ByteOrder.nativeOrder())
        interpreter.run(inBuffer, outBuffer)
        outBuffer.rewind()
        if (q != null) {
            val raw = ByteArray(count)
            outBuffer.get(raw)
            return Contract.dequantize(raw, q)
        }
        return FloatArray(count).also { outBuffer.asFloatBuffer().get(it) }
    }

    override fun close() = interpreter.close()
}
