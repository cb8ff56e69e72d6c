"""tf.data input pipeline, dataset readers, synthetic videos and optical flow."""
