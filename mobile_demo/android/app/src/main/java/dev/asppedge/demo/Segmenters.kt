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
import java.io.InputStream
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.MappedByteBuffer
import java.nio.channels.FileChannel
import java.security.MessageDigest

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

    /** What writes these assets (mobile_demo/README.md, section 1), for messages and the tests. */
    const val INSTALL = "from the repository root: .venv/bin/aspp-edge run --recipe default --out runs/default " +
        "--for-apps mobile_demo (or aspp-edge export ... --for-apps mobile_demo), then reinstall the app"

    /** Backends present in this build's assets, from apps.json (written with the artifacts). */
    fun installed(context: Context): Set<String> {
        val names = context.assets.list("")?.toSet() ?: emptySet()
        if (INDEX !in names) return emptySet()
        val index = JSONObject(context.assets.open(INDEX).bufferedReader().use { it.readText() })
        return index.getJSONObject("artifacts").keys().asSequence().toSet()
    }

    /**
     * The bundled model `name` as a file in the app's files directory, for ExecuTorch (`Module.load`
     * takes a path, not an asset). The copy is made again whenever its SHA-256 differs from the
     * manifest's `sha256`: after `installDebug` with new assets the old copy is replaced, never run.
     */
    fun modelFile(context: Context, name: String, expectedSha256: String): File {
        val out = File(context.filesDir, name)
        if (out.isFile && sha256(out) == expectedSha256) return out
        val tmp = File(context.filesDir, "$name.partial")
        context.assets.open(name).use { input -> tmp.outputStream().use { input.copyTo(it) } }
        val copied = sha256(tmp)
        if (copied != expectedSha256) {
            tmp.delete()
            error("$name in the APK has SHA-256 $copied, its manifest says $expectedSha256: reinstall the assets ($INSTALL)")
        }
        check(tmp.renameTo(out)) { "cannot move $tmp to $out" }
        return out
    }

    /**
     * The bundled model `name` memory-mapped straight from the APK, for LiteRT (its Interpreter takes
     * a MappedByteBuffer). `openFd` works only on assets stored uncompressed: app/build.gradle.kts
     * lists the extension in `noCompress`. Checked against the manifest's `sha256` too.
     */
    fun mapped(context: Context, name: String, expectedSha256: String): MappedByteBuffer {
        val fd = context.assets.openFd(name)
        val buffer = fd.createInputStream().use { it.channel.map(FileChannel.MapMode.READ_ONLY, fd.startOffset, fd.declaredLength) }
        val actual = hex(MessageDigest.getInstance("SHA-256").apply { update(buffer.duplicate()) }.digest())
        check(actual == expectedSha256) {
            "$name in the APK has SHA-256 $actual, its manifest says $expectedSha256: reinstall the assets ($INSTALL)"
        }
        return buffer
    }

    fun sha256(file: File): String = file.inputStream().use { sha256(it) }

    private fun sha256(input: InputStream): String {
        val digest = MessageDigest.getInstance("SHA-256")
        val chunk = ByteArray(1 shl 16)
        while (true) {
            val n = input.read(chunk)
            if (n < 0) break
            digest.update(chunk, 0, n)
        }
        return hex(digest.digest())
    }

    private fun hex(bytes: ByteArray): String = bytes.joinToString("") { "%02x".format(it) }

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

/**
 * `.pte` through ExecuTorch's Android Module API (XNNPACK delegate inside the program). Module.load
 * takes a file path, so the model runs from a copy in the app's files (Assets.modelFile), mmapped.
 */
class ExecuTorchSegmenter(context: Context) : Segmenter(ArtifactManifest.parse(Assets.text(context, Assets.PTE_MANIFEST))) {
    override val runtimeName = "ExecuTorch"
    private val module: Module =
        Module.load(Assets.modelFile(context, Assets.PTE, manifest.sha256).absolutePath, Module.LOAD_MODE_MMAP)

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

/**
 * `.tflite` through LiteRT's Interpreter (XNNPACK is its default CPU delegate), memory-mapped
 * straight from the APK (Assets.mapped): no copy.
 */
class LiteRtSegmenter(context: Context, threads: Int = 4) :
    Segmenter(ArtifactManifest.parse(Assets.text(context, Assets.TFLITE_MANIFEST))) {
    override val runtimeName = "LiteRT"
    private val interpreter =
        Interpreter(Assets.mapped(context, Assets.TFLITE, manifest.sha256), Interpreter.Options().setNumThreads(threads))

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
