package dev.asppedge.demo

import android.graphics.Bitmap
import android.graphics.BitmapFactory
import android.graphics.Color
import androidx.test.ext.junit.runners.AndroidJUnit4
import androidx.test.platform.app.InstrumentationRegistry
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assume.assumeTrue
import org.junit.Test
import org.junit.runner.RunWith

/**
 * The bundled sample through each bundled artifact on the phone, against the mask the host demo
 * (`aspp-edge demo`, via `--for-apps`) predicted for the same artifact: pixel agreement >= 0.99
 * (phone kernels round differently from the host's; CONTRACT.md).
 */
@RunWith(AndroidJUnit4::class)
class SampleMaskTest {
    private val context = InstrumentationRegistry.getInstrumentation().targetContext

    private fun bitmap(name: String): Bitmap {
        val options = BitmapFactory.Options().apply { inScaled = false; inPreferredConfig = Bitmap.Config.ARGB_8888 }
        return context.assets.open(name).use { BitmapFactory.decodeStream(it, null, options)!! }
    }

    private fun expectedMask(name: String): ByteArray {
        val png = bitmap(name)
        val pixels = IntArray(png.width * png.height)
        png.getPixels(pixels, 0, png.width, 0, 0, png.width, png.height)
        return ByteArray(pixels.size) { Color.red(pixels[it]).toByte() } // greyscale PNG: class index in every channel
    }

    private fun check(segmenter: Segmenter, expectedName: String) {
        val sample = bitmap(Assets.SAMPLE)
        assertEquals(segmenter.manifest.width, sample.width)
        assertEquals(segmenter.manifest.height, sample.height)
        val result = segmenter.segment(sample)
        val expected = expectedMask(expectedName)
        val agreement = Contract.agreement(result.mask, expected)
        assertTrue("${segmenter.runtimeName}: agreement $agreement with the host demo's mask < 0.99", agreement >= 0.99)
        assertTrue("a constant mask is not a segmentation", result.mask.toSet().size >= 2)
    }

    @Test
    fun executorchMatchesHostDemo() {
        assumeTrue("no .pte bundled", "executorch" in Assets.installed(context))
        ExecuTorchSegmenter(context).use { check(it, Assets.PTE_EXPECTED_MASK) }
    }

    @Test
    fun litertMatchesHostDemo() {
        assumeTrue("no .tflite bundled", "tflite" in Assets.installed(context))
        LiteRtSegmenter(context).use { check(it, Assets.TFLITE_EXPECTED_MASK) }
    }

    @Test
    fun manifestsFollowTheContract() {
        for (name in listOf(Assets.PTE_MANIFEST, Assets.TFLITE_MANIFEST)) {
            if (name !in (context.assets.list("") ?: emptyArray())) continue
            val m = ArtifactManifest.parse(Assets.text(context, name))
            assertEquals(m.labels.size, m.classes)
            assertEquals(m.colors.size, m.labels.size)
        }
    }
}
