package dev.asppedge.demo

import android.graphics.Bitmap
import android.graphics.Canvas
import android.graphics.Color
import android.graphics.Paint
import org.json.JSONObject
import kotlin.math.floor
import kotlin.math.min
import kotlin.math.roundToInt

/**
 * mobile_demo/CONTRACT.md in Kotlin: the manifest fields the app needs, the letterbox, the input
 * tensor (normalization, int8 quantization, layout), the argmax and the overlay. The host demo
 * (`aspp-edge demo`) implements the same steps; the instrumented test compares the two.
 */
data class Quantization(val dtype: String, val scale: Float, val zeroPoint: Int)

data class Box(val x: Int, val y: Int, val w: Int, val h: Int)

data class ArtifactManifest(
    val artifact: String,
    val sha256: String,
    val backend: String,
    val precision: String,
    val method: String,
    val inputLayout: String,
    val inputShape: IntArray,
    val pixelScale: Float,
    val mean: FloatArray,
    val std: FloatArray,
    val normalizedByApp: Boolean,
    val inputQuantization: Quantization?,
    val outputLayout: String,
    val outputShape: IntArray,
    val outputQuantization: Quantization?,
    val labels: List<String>,
    val colors: List<Int>,
) {
    val width: Int get() = if (inputLayout == "NCHW") inputShape[3] else inputShape[2]
    val height: Int get() = if (inputLayout == "NCHW") inputShape[2] else inputShape[1]
    val classes: Int get() = if (outputLayout == "NCHW") outputShape[1] else outputShape[3]
    val outHeight: Int get() = if (outputLayout == "NCHW") outputShape[2] else outputShape[1]
    val outWidth: Int get() = if (outputLayout == "NCHW") outputShape[3] else outputShape[2]

    companion object {
        const val SCHEMA_VERSION = 1

        fun parse(json: String): ArtifactManifest {
            val m = JSONObject(json)
            require(m.getInt("schema_version") == SCHEMA_VERSION) { "manifest schema_version ${m.getInt("schema_version")} is not $SCHEMA_VERSION" }
            val input = m.getJSONObject("input")
            val output = m.getJSONObject("output")
            val norm = input.getJSONObject("normalization")
            val colors = m.getJSONArray("colors")
            val labels = m.getJSONArray("labels")
            return ArtifactManifest(
                artifact = m.getString("artifact"),
                sha256 = m.getString("sha256"),
                backend = m.getString("backend"),
                precision = m.getString("precision"),
                method = m.getString("method"),
                inputLayout = input.getString("layout"),
                inputShape = IntArray(4) { input.getJSONArray("shape").getInt(it) },
                pixelScale = norm.getDouble("pixel_scale").toFloat(),
                mean = FloatArray(3) { norm.getJSONArray("mean").getDouble(it).toFloat() },
                std = FloatArray(3) { norm.getJSONArray("std").getDouble(it).toFloat() },
                normalizedByApp = norm.getString("applied_by") == "app",
                inputQuantization = quantization(input),
                outputLayout = output.getString("layout"),
                outputShape = IntArray(4) { output.getJSONArray("shape").getInt(it) },
                outputQuantization = quantization(output),
                labels = List(labels.length()) { labels.getString(it) },
                colors = List(colors.length()) {
                    val c = colors.getJSONArray(it)
                    Color.rgb(c.getInt(0), c.getInt(1), c.getInt(2))
                },
            )
        }

        private fun quantization(spec: JSONObject): Quantization? {
            if (spec.isNull("quantization")) return null
            val q = spec.getJSONObject("quantization")
            return Quantization(q.getString("dtype"), q.getDouble("scale").toFloat(), q.getInt("zero_point"))
        }
    }
}

/** The model's input tensor, in whichever element type the manifest asks for. */
class InputTensor(val floats: FloatArray?, val bytes: ByteArray?, val shape: LongArray)

object Contract {
    /** Step 1-2: composite over black and letterbox into width x height (bilinear), centred. */
    fun letterbox(image: Bitmap, width: Int, height: Int): Pair<Bitmap, Box> {
        val s = min(width.toFloat() / image.width, height.toFloat() / image.height)
        val w = min(width, maxOf(1, (image.width * s).roundToInt()))
        val h = min(height, maxOf(1, (image.height * s).roundToInt()))
        val box = Box((width - w) / 2, (height - h) / 2, w, h)
        val canvasBitmap = Bitmap.createBitmap(width, height, Bitmap.Config.ARGB_8888)
        val canvas = Canvas(canvasBitmap)
        canvas.drawColor(Color.BLACK)
        val scaled = if (w == image.width && h == image.height) image else Bitmap.createScaledBitmap(image, w, h, true)
        canvas.drawBitmap(scaled, box.x.toFloat(), box.y.toFloat(), Paint(Paint.FILTER_BITMAP_FLAG))
        return Pair(canvasBitmap, box)
    }

    /** Steps 3-5: pixels -> normalized, quantized, laid-out input tensor. */
    fun toInput(letterboxed: Bitmap, m: ArtifactManifest): InputTensor {
        val w = m.width
        val h = m.height
        val pixels = IntArray(w * h)
        letterboxed.getPixels(pixels, 0, w, 0, 0, w, h)
        val values = FloatArray(3 * w * h)
        for (i in 0 until w * h) {
            val p = pixels[i]
            val rgb = intArrayOf(Color.red(p), Color.green(p), Color.blue(p))
            for (c in 0 until 3) {
                val x = if (m.normalizedByApp) (rgb[c] * m.pixelScale - m.mean[c]) / m.std[c] else rgb[c].toFloat()
                val at = if (m.inputLayout == "NCHW") c * w * h + i else i * 3 + c
                values[at] = x
            }
        }
        val shape = LongArray(4) { m.inputShape[it].toLong() }
        val q = m.inputQuantization ?: return InputTensor(values, null, shape)
        val (lo, hi) = if (q.dtype == "uint8") Pair(0, 255) else Pair(-128, 127)
        val bytes = ByteArray(values.size) { k ->
            val v = Math.rint((values[k] / q.scale).toDouble()).toInt() + q.zeroPoint // rint: half to even
            v.coerceIn(lo, hi).toByte()
        }
        return InputTensor(null, bytes, shape)
    }

    /** Output step 1: int8 logits -> real values. */
    fun dequantize(raw: ByteArray, q: Quantization): FloatArray =
        FloatArray(raw.size) { (raw[it].toInt() - q.zeroPoint) * q.scale }

    /** Output step 2: argmax over classes; ties go to the lowest class index. */
    fun argmax(logits: FloatArray, m: ArtifactManifest): ByteArray {
        val c = m.classes
        val h = m.outHeight
        val w = m.outWidth
        val mask = ByteArray(h * w)
        for (i in 0 until h * w) {
            var best = 0
            var bestValue = Float.NEGATIVE_INFINITY
            for (k in 0 until c) {
                val v = if (m.outputLayout == "NCHW") logits[k * h * w + i] else logits[i * c + k]
                if (v > bestValue) {
                    bestValue = v
                    best = k
                }
            }
            mask[i] = best.toByte()
        }
        return mask
    }

    /** Output step 3: the mask inside the letterbox box, nearest neighbour at pixel centres, at width x height. */
    fun unletterbox(mask: ByteArray, maskWidth: Int, maskHeight: Int, box: Box, width: Int, height: Int,
                    inputWidth: Int, inputHeight: Int): ByteArray {
        val sy = maskHeight.toDouble() / inputHeight
        val sx = maskWidth.toDouble() / inputWidth
        val out = ByteArray(width * height)
        for (y in 0 until height) {
            val my = floor((box.y + (y + 0.5) * box.h / height) * sy).toInt().coerceIn(0, maskHeight - 1)
            for (x in 0 until width) {
                val mx = floor((box.x + (x + 0.5) * box.w / width) * sx).toInt().coerceIn(0, maskWidth - 1)
                out[y * width + x] = mask[my * maskWidth + mx]
            }
        }
        return out
    }

    /** Output step 4: 50 % colour overlay at the image's size. */
    fun overlay(image: Bitmap, mask: ByteArray, colors: List<Int>): Bitmap {
        val w = image.width
        val h = image.height
        val pixels = IntArray(w * h)
        image.getPixels(pixels, 0, w, 0, 0, w, h)
        for (i in pixels.indices) {
            val p = pixels[i]
            val c = colors[mask[i].toInt() and 0xFF]
            val a = Color.alpha(p)
            val r = Math.rint(0.5 * (Color.red(p) * a / 255.0) + 0.5 * Color.red(c)).toInt()
            val g = Math.rint(0.5 * (Color.green(p) * a / 255.0) + 0.5 * Color.green(c)).toInt()
            val b = Math.rint(0.5 * (Color.blue(p) * a / 255.0) + 0.5 * Color.blue(c)).toInt()
            pixels[i] = Color.rgb(r, g, b)
        }
        return Bitmap.createBitmap(pixels, w, h, Bitmap.Config.ARGB_8888)
    }

    /** Pixel agreement of two masks (the instrumented test's check). */
    fun agreement(a: ByteArray, b: ByteArray): Double {
        require(a.size == b.size) { "masks differ in size: ${a.size} vs ${b.size}" }
        var same = 0
        for (i in a.indices) if (a[i] == b[i]) same++
        return same.toDouble() / a.size
    }
}
